"""Requantize a node that interacts after training, from what the artifact stores.

A new (or changed) user's LightGCN view is the degree-normalised sum of the vectors of the items it
interacted with: ``z_u ∝ sum_i x_i / sqrt(|I_u| * d_i)`` (the first propagation hop; only the direction
matters for ranking that user's items). The vector is then quantized node-aware, the way GNAQ sets
every node's grid (docs/method.md): a grid fitted to the node's own mean and spread (a), corrected by
the refined parameters of its neighbours (b): a new node has no learned ``theta`` of its own, so its
layer mean ``1/(L+1) sum_k P^k theta`` is ``L/(L+1)`` times the mean of its items' refined ``theta``
(mean-free per table under ``--relative-refinement``, so the new user's correction is relative too).
Only the served item table, the item degrees, the items' refined ``theta`` and the quantizer settings
are needed, and all of them are in the artifact. A centred model's user mean (``--center``) is not
applied: a folded-in vector is built on the items' scale, not the trained users', so its own grid is
fitted to it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.quantizers import DEFAULT_CLIP, encode_stored, gaussian_grid, row_statistics
from model.tables import EmbeddingTable, FloatTable, QuantizedTable

# Bits of the rows the service requantizes for users who interacted after training. A user row is a query, never
# indexed, so it need not match the item codes: at a 2-bit model's own width, requantizing a trained user's vector
# from scratch loses more than the post adds (docs/method.md, "Users who post after training").
ROW_BITS = 8


def fold_in(item_vectors: np.ndarray, item_degree: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Float32 vector of a user who interacted with ``items`` (indices into ``item_vectors``)."""
    items = np.unique(np.asarray(items, dtype=np.int64))
    if items.size == 0:
        raise ValueError("a node needs at least one interaction to be folded in")
    if items.min() < 0 or items.max() >= len(item_vectors):
        raise ValueError(f"item index out of range 0..{len(item_vectors) - 1}")
    weights = 1.0 / np.sqrt(len(items) * np.maximum(item_degree[items], 1.0))
    return (weights[:, None] * item_vectors[items]).sum(axis=0).astype(np.float32)


def neighbour_theta(theta: np.ndarray | None, neighbours: np.ndarray, layers: int) -> np.ndarray | None:
    """A new node's refined ``theta``: ``L/(L+1)`` times the mean refined ``theta`` of its neighbours."""
    if theta is None:
        return None
    mean = theta[np.unique(neighbours)].astype(np.float32).mean(axis=0)
    return mean * layers / (layers + 1)


def requantize(vector: np.ndarray, *, bits: int, clip: float, dim_scale: np.ndarray | None,
               theta: np.ndarray | None = None) -> QuantizedTable:
    """One-row ``QuantizedTable`` for ``vector``: a grid from its own distribution, shifted by ``theta``.

    ``theta = (rho, delta)`` scales the step by ``exp(rho)`` and moves the centre by ``delta`` node
    standard deviations, as ``GNAQQuantizer.node_parameters`` does; ``None`` means no correction.
    """
    x = torch.from_numpy(np.asarray(vector, dtype=np.float32)).reshape(1, -1)
    g16 = None if dim_scale is None else np.asarray(dim_scale, dtype=np.float16)
    if g16 is not None:
        x = x / torch.from_numpy(g16.astype(np.float32))
    mean, std = row_statistics(x)
    if theta is not None:
        rho, delta = (float(t) for t in np.asarray(theta, dtype=np.float32))
        mean, std = mean + std.clamp_min(1e-8) * delta, std * float(np.exp(rho))
    codes, scale16, offset16 = encode_stored(x, *gaussian_grid(mean, std, bits, clip), bits)
    return QuantizedTable(codes.numpy(), scale16.reshape(1).numpy(), offset16.reshape(1).numpy(), bits, g16)


@dataclass(frozen=True, eq=False)
class FoldIn:
    """Everything needed to (re)build one user's served vector from its item interactions.

    ``item_table``: the served items (codes, or float32 for a full-precision model); ``item_degree``: their
    degrees in the training graph; ``clip``: the quantizer's step as a multiple of the Gaussian MSE-optimal one;
    ``item_theta``: GNAQ's refined ``(rho, delta)`` per item, if stored; ``layers``: propagation layers ``L``.
    """

    item_table: EmbeddingTable
    item_degree: np.ndarray
    clip: float = DEFAULT_CLIP
    item_theta: np.ndarray | None = None
    layers: int = 0

    def neighbour_theta(self, items: np.ndarray) -> np.ndarray | None:
        """A new user's refined ``theta`` from its items' (``neighbour_theta``)."""
        return neighbour_theta(self.item_theta, items, self.layers)

    def _vector(self, items: np.ndarray) -> np.ndarray:
        """``fold_in`` over the served vectors of ``items`` (unique, checked indices)."""
        n_items = len(self.item_degree)
        if items.size and (items.min() < 0 or items.max() >= n_items):
            raise ValueError(f"item index out of range 0..{n_items - 1}")
        return fold_in(self.item_table.dequantize(items), self.item_degree[items], np.arange(len(items)))

    def _stored(self, vector: np.ndarray, items: np.ndarray) -> EmbeddingTable:
        """``vector`` in the user's stored form: a one-row table of the item table's kind."""
        table = self.item_table
        if not isinstance(table, QuantizedTable):
            return FloatTable(vector.reshape(1, -1))
        return requantize(vector, bits=ROW_BITS, clip=self.clip, dim_scale=table.dim_scale,
                          theta=self.neighbour_theta(items))

    def user(self, items: np.ndarray) -> EmbeddingTable:
        """A user known only from ``items`` (a cold start): its vector rebuilt from them alone."""
        items = np.unique(np.asarray(items, dtype=np.int64))
        return self._stored(self._vector(items), items)

    def update(self, trained: np.ndarray, trained_items: np.ndarray, new_items: np.ndarray) -> EmbeddingTable:
        """A trained user's vector after it interacted with ``new_items``: the trained vector, not a rebuild.

        By the propagation rule a user's first-hop view over ``n`` items, ``sum_i x_i / sqrt(n d_i)``, becomes
        ``(sqrt(n) f_old + sum_new x_i / sqrt(d_i)) / sqrt(n + m)`` with ``m`` new items. The trained vector
        stands in for ``f_old`` (rescaled by ``s = |trained| / |f_old|`` to the fold-in's scale), so what training
        learned beyond the first hop is kept and only the new neighbours are added.
        """
        trained_items = np.unique(np.asarray(trained_items, dtype=np.int64))
        new = np.setdiff1d(np.asarray(new_items, dtype=np.int64), trained_items)
        everything = np.union1d(trained_items, new)
        if new.size == 0 or trained_items.size == 0:
            return self._stored(np.asarray(trained, dtype=np.float32) if new.size == 0 else self._vector(new),
                                everything)
        n, m = len(trained_items), len(new)
        old = self._vector(trained_items)
        scale = float(np.linalg.norm(trained)) / max(float(np.linalg.norm(old)), 1e-12)
        added = self._vector(new) * np.sqrt(m)  # sum over the new items of x_i / sqrt(d_i)
        vector = (np.sqrt(n) * np.asarray(trained, dtype=np.float32) + scale * added) / np.sqrt(n + m)
        return self._stored(vector.astype(np.float32), everything)

    def decode_user(self, payload: bytes) -> EmbeddingTable:
        """A user row from the bytes of ``user(...).row_bytes()``: rows carry the items' per-dimension scale."""
        table = self.item_table
        if not isinstance(table, QuantizedTable):
            return FloatTable.from_row_bytes(payload, table.dim)
        return QuantizedTable.from_row_bytes(payload, bits=ROW_BITS, dim=table.dim, dim_scale=table.dim_scale)
