"""GNAQ model code: LightGCN propagation and node-aware embedding quantizers."""
