"""Requantize a node that interacts after training, from what the artifact stores.

A new (or changed) user's LightGCN view is the degree-normalised sum of the vectors of the items it
interacted with: ``z_u ∝ sum_i x_i / sqrt(|I_u| * d_i)`` (the first propagation hop; only the direction
matters for ranking that user's items). The vector is then quantized the way GNAQ initialises every node:
a grid fitted to the node's own mean and spread (docs/method.md, (a)), with the model's per-dimension
scale, bit width and clip. Only the served item table, the item degrees and the quantizer settings are
needed, and all of them are in the artifact.
"""

from __future__ import annotations

import numpy as np
import torch

from model.quantized_table import QuantizedTable
from model.quantizers import encode_stored, gaussian_grid


def fold_in(item_vectors: np.ndarray, item_degree: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Float32 vector of a user who interacted with ``items`` (indices into ``item_vectors``)."""
    items = np.unique(np.asarray(items, dtype=np.int64))
    if items.size == 0:
        raise ValueError("a node needs at least one interaction to be folded in")
    if items.min() < 0 or items.max() >= len(item_vectors):
        raise ValueError(f"item index out of range 0..{len(item_vectors) - 1}")
    weights = 1.0 / np.sqrt(len(items) * np.maximum(item_degree[items], 1.0))
    return (weights[:, None] * item_vectors[items]).sum(axis=0).astype(np.float32)


def requantize(vector: np.ndarray, *, bits: int, clip: float, dim_scale: np.ndarray | None) -> QuantizedTable:
    """One-row ``QuantizedTable`` for ``vector``, with a grid initialised from its own distribution."""
    x = torch.from_numpy(np.asarray(vector, dtype=np.float32)).reshape(1, -1)
    g16 = None if dim_scale is None else np.asarray(dim_scale, dtype=np.float16)
    if g16 is not None:
        x = x / torch.from_numpy(g16.astype(np.float32))
    mean, std = x.mean(dim=1, keepdim=True), x.std(dim=1, unbiased=False, keepdim=True)
    codes, scale16, offset16 = encode_stored(x, *gaussian_grid(mean, std, bits, clip), bits)
    return QuantizedTable(codes.numpy(), scale16.reshape(1).numpy(), offset16.reshape(1).numpy(), bits, g16)


def requantize_user(item_vectors: np.ndarray, item_degree: np.ndarray, items: np.ndarray, *, bits: int,
                    clip: float, dim_scale: np.ndarray | None) -> QuantizedTable:
    """Fold a user in from ``items`` and quantize it: the codes the service stores for that user."""
    return requantize(fold_in(item_vectors, item_degree, items), bits=bits, clip=clip, dim_scale=dim_scale)
