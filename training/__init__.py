"""GNAQ training job: data loading, splits, training loop, evaluation and artifact export."""
