"""Embedding quantizers: what turns final float node embeddings into b-bit codes.

Every quantizer maps the ``(n_users + n_items, d)`` final embeddings to per-node (or per-table)
``scale`` and ``offset`` and uniform codes ``q in {0..2^b-1}``: ``x_hat = offset + scale * q``.
``forward`` is the differentiable fake-quantization used in training; ``node_parameters`` is the one
place a quantizer decides its parameters, so new baselines (LSQ, N2UQ, BiGeaR) plug into the same
training loop by overriding it (and, if needed, ``round``). See docs/method.md for the formulas.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from model.graph import layer_mean

SUPPORTED_BITS = (1, 2, 3, 4, 5, 6, 7, 8)

# Step of the MSE-optimal uniform quantizer of a unit Gaussian with 2^b levels (Max, 1960).
GAUSSIAN_STEP = {1: 1.596, 2: 0.9957, 3: 0.5860, 4: 0.3352, 5: 0.1881, 6: 0.1041, 7: 0.0569, 8: 0.0308}

_MIN_SCALE = 1e-4  # float16 keeps ~3 significant digits from here on; avoids a zero step


class QuantizedCodes(NamedTuple):
    """What ``encode`` returns for all nodes: codes, float16 parameters, optional dimension scale and centres."""

    codes: Tensor
    scale: Tensor
    offset: Tensor
    dim_scale: Tensor | None
    dim_center: Tensor | None = None  # (2, d): the user table's and the item table's mean vector


def _check_bits(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits}")
    return bits


class _StraightThroughRound(torch.autograd.Function):
    """round() whose backward is the identity (the plain STE)."""

    @staticmethod
    def forward(ctx, u: Tensor) -> Tensor:
        return torch.round(u)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class _GraphRelationAwareRound(torch.autograd.Function):
    """round() whose backward adds a graph-weighted pull towards the quantization grid.

    ``grad_u = grad + eta * w_v * rms_v(grad) * (u - round(u))``: the STE gradient plus the gradient
    of node v's rounding error, weighted by how much v's error reaches other nodes (``w_v``, its
    column mass in the normalised adjacency) and scaled to the node's own gradient magnitude.
    """

    @staticmethod
    def forward(ctx, u: Tensor, influence: Tensor, eta: float) -> Tensor:
        rounded = torch.round(u)
        ctx.save_for_backward(u - rounded, influence)
        ctx.eta = eta
        return rounded

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        residual, influence = ctx.saved_tensors
        rms = torch.linalg.vector_norm(grad, dim=1, keepdim=True) / math.sqrt(grad.shape[1])
        return torch.addcmul(grad, residual, ctx.eta * influence * rms), None, None


DEFAULT_CLIP = 0.8  # GNAQ's grid step as a multiple of the Gaussian MSE-optimal one: training and fold-in


def gaussian_grid(mean: Tensor, std: Tensor, bits: int, clip: float) -> tuple[Tensor, Tensor]:
    """``(scale, offset)`` of a 2^b-level grid centred on ``mean`` with step ``clip * c_b * std``."""
    scale = clip * GAUSSIAN_STEP[bits] * std.clamp_min(1e-8)
    return scale, mean - scale * (2**bits - 1) / 2


def row_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's mean and population standard deviation, ``(N, 1)`` each.

    Written as the norm of the deviations: the same two-pass value as ``Tensor.std``, whose reduction over short
    rows is several times slower on CPU (a third of a GNAQ quantizer step on Gowalla's 71k nodes).
    """
    mean = x.mean(dim=1, keepdim=True)
    return mean, torch.linalg.vector_norm(x - mean, dim=1, keepdim=True) / math.sqrt(x.shape[1])


def encode_stored(x: Tensor, scale: Tensor, offset: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """uint8 codes of ``x`` against float16-rounded ``(scale, offset)``, returned as stored (float16)."""
    scale16 = scale.clamp_min(_MIN_SCALE).to(torch.float16)
    offset16 = offset.to(torch.float16)
    u = (x - offset16.float()) / scale16.float()
    return torch.clamp(torch.round(u), 0, 2**bits - 1).to(torch.uint8), scale16, offset16


def _shift_and_scale(z: Tensor, centers: Tensor | None, g: Tensor | None) -> Tensor:
    """``(z - centers) / g``, each step skipped where its part is None."""
    z = z if centers is None else z - centers
    return z if g is None else z / g


def _per_table(values: Tensor, n_users: int, reduce) -> Tensor:
    """Apply ``reduce`` to the user rows and to the item rows separately; broadcast back per row."""
    users, items = reduce(values[:n_users]), reduce(values[n_users:])
    return torch.cat([users.expand(n_users, -1), items.expand(len(values) - n_users, -1)])


class EmbeddingQuantizer(nn.Module):
    """Base class: uniform b-bit fake quantization with parameters chosen by a subclass."""

    per_node: bool = True
    # True: the quantizer takes every propagation layer side by side, (N, (L+1)*d), instead of their
    # mean z (see LightGCN.quantizer_input); BiGeaR-style per-layer codes need this.
    per_layer: bool = False

    def __init__(self, bits: int, n_users: int) -> None:
        super().__init__()
        self.bits = _check_bits(bits)
        self.n_users = n_users
        # Optional shared per-dimension scale g: codes quantize z / g and decode to g * x_hat.
        self.register_buffer("dim_scale", None)
        # Optional per-table mean vectors mu (users, items), (2, d): codes quantize (z - mu) / g.
        self.register_buffer("dim_center", None)

    @property
    def levels(self) -> int:
        return 2**self.bits - 1

    def node_parameters(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(scale, offset)``, each ``(N, 1)``, for final embeddings ``z``."""
        raise NotImplementedError

    def round(self, u: Tensor) -> Tensor:
        """Rounding used in training; the default gradient estimator is the plain STE."""
        return _StraightThroughRound.apply(u)

    def record(self) -> dict:
        """Learned or chosen settings worth recording in the manifest, besides bits and granularity."""
        return {}

    def _stored_dim_scale(self) -> Tensor | None:
        return None if self.dim_scale is None else self.dim_scale.to(torch.float16).float()

    def _stored_centers(self, n_nodes: int) -> Tensor | None:
        """``(N, d)``: each row's table mean as stored (float16), or None without centring."""
        if self.dim_center is None:
            return None
        users, items = self.dim_center.to(torch.float16).float()
        return torch.cat([users.expand(self.n_users, -1), items.expand(n_nodes - self.n_users, -1)])

    def _normalized(self, z: Tensor) -> Tensor:
        """What the grids quantize: ``(z - mu) / g`` (each part only where it is set)."""
        return _shift_and_scale(z, self._stored_centers(len(z)), self._stored_dim_scale())

    def forward(self, z: Tensor) -> Tensor:
        """Differentiable fake-quantized ``z``: the values the served codes decode to."""
        centers, g = self._stored_centers(len(z)), self._stored_dim_scale()
        x = _shift_and_scale(z, centers, g)
        scale, offset = self.node_parameters(x)
        codes = torch.clamp(self.round((x - offset) / scale), 0, self.levels)
        decoded = offset + scale * codes
        decoded = decoded if g is None else decoded * g
        return decoded if centers is None else decoded + centers

    @torch.no_grad()
    def encode(self, z: Tensor) -> QuantizedCodes:
        """Hard codes with float16 parameters, exactly as they are stored and served.

        Codes are computed against the float16-rounded parameters, so decoding the stored artifact
        reproduces exactly what evaluation scores. Per-table quantizers return ``(2,)`` parameters
        (users, items); per-node ones ``(N,)``.
        """
        g, x = self._stored_dim_scale(), self._normalized(z)
        codes, scale16, offset16 = encode_stored(x, *self.node_parameters(x), self.bits)
        if not self.per_node:
            scale16, offset16 = scale16[[0, self.n_users]], offset16[[0, self.n_users]]
        return QuantizedCodes(codes, scale16.squeeze(1), offset16.squeeze(1),
                              None if g is None else g.to(torch.float16),
                              None if self.dim_center is None else self.dim_center.to(torch.float16))


class UniformQuantizer(EmbeddingQuantizer):
    """Min-max uniform quantization, per node or per table: the post-training (PTQ) baseline."""

    def __init__(self, bits: int, n_users: int, *, per_node: bool) -> None:
        super().__init__(bits, n_users)
        self.per_node = per_node

    def node_parameters(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if self.per_node:
            low, high = z.min(dim=1, keepdim=True).values, z.max(dim=1, keepdim=True).values
        else:
            low = _per_table(z, self.n_users, lambda t: t.min().view(1, 1))
            high = _per_table(z, self.n_users, lambda t: t.max().view(1, 1))
        return ((high - low) / self.levels).clamp_min(_MIN_SCALE), low


class GNAQQuantizer(EmbeddingQuantizer):
    """Node-aware dynamic quantization (GNAQ) with switchable parts for ablations.

    ``node_aware`` (a): per-node parameters from the node's own mean/std, else one per table.
    ``dynamic`` (b): parameters follow the current embeddings and learnable corrections refined by
    message passing (layer mean of ``P^k theta`` over the row-normalised graph ``P = D^-1 A``); else they are
    fixed at initialisation from the warm-start embeddings. ``P^k = D^-1/2 A_sym^k D^1/2``, so the corrections are
    propagated over LightGCN's own symmetric ``adjacency``, as ``D^1/2 theta``, and no second graph is built;
    ``degree``: each node's training degree.
    ``estimator`` (c): ``"graph"`` (graph relation-aware, see ``_GraphRelationAwareRound``) or ``"ste"``.
    ``center``: subtract each table's mean vector before the grids (the direction all users, or all
    items, share is stored once per table instead of being rounded in every node).
    ``relative``: the refined corrections are made mean-free per table, so (b) redistributes step and
    centre among a table's nodes but cannot move the table's own (the clip chosen on validation).
    """

    def __init__(self, bits: int, n_users: int, *, adjacency: Tensor, degree: Tensor, influence: Tensor,
                 layers: int, node_aware: bool = True, dynamic: bool = True,
                 estimator: str = "graph", eta: float = 0.5, equalize: bool = True,
                 clip: float = DEFAULT_CLIP, center: bool = False, track_stats: bool = True,
                 relative: bool = False) -> None:
        super().__init__(bits, n_users)
        if estimator not in ("graph", "ste"):
            raise ValueError(f"estimator must be 'graph' or 'ste', got {estimator!r}")
        n_nodes = adjacency.shape[0]
        self.per_node, self.dynamic, self.estimator = node_aware, dynamic, estimator
        self.layers, self.eta, self.equalize, self.clip, self.center = layers, eta, equalize, clip, center
        self.track_stats, self.relative = track_stats, relative
        self.register_buffer("adjacency", adjacency, persistent=False)
        # D^1/2, with 1 for an isolated node (its theta only reaches itself, at layer 0, either way).
        root = degree.reshape(-1, 1).float().sqrt()
        self.register_buffer("degree_root", torch.where(root > 0, root, torch.ones_like(root)), persistent=False)
        self.register_buffer("influence", influence.reshape(-1, 1).float(), persistent=False)
        # theta = (rho, delta): log-multiplier of the step and shift of the centre, in node std units.
        self.theta = nn.Parameter(torch.zeros(n_nodes if node_aware else 2, 2), requires_grad=dynamic)
        self.register_buffer("fixed_mean", torch.zeros(n_nodes, 1))
        self.register_buffer("fixed_std", torch.ones(n_nodes, 1))
        # Set by ``freeze``: the grids stay at fixed_mean/fixed_std from then on (a state, so it is checkpointed).
        self.register_buffer("frozen", torch.tensor(False))

    def _statistics(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of each node's own values (or of its whole table)."""
        if self.per_node:
            return row_statistics(z)
        mean = _per_table(z, self.n_users, lambda t: t.mean().view(1, 1))
        std = _per_table(z, self.n_users, lambda t: t.std(unbiased=False).view(1, 1))
        return mean, std

    def _refined_theta(self, n_nodes: int) -> Tensor:
        """Per-node ``theta`` after message passing: ``1/(L+1) sum_k P^k theta`` (less its table's mean
        if ``relative``), computed as ``D^-1/2`` times the layer mean of ``D^1/2 theta`` over the symmetric graph."""
        if not self.per_node:
            users, items = self.theta[:1], self.theta[1:]
            refined = torch.cat([users.expand(self.n_users, 2), items.expand(n_nodes - self.n_users, 2)])
        else:
            refined = layer_mean(self.adjacency, self.theta * self.degree_root, self.layers) / self.degree_root
        if self.relative:
            refined = refined - _per_table(refined, self.n_users, lambda t: t.mean(dim=0, keepdim=True))
        return refined

    @torch.no_grad()
    def refined_theta(self, n_nodes: int) -> Tensor:
        """Per-node ``(rho, delta)`` after message passing; stored for folding in new nodes."""
        return self._refined_theta(n_nodes)

    @torch.no_grad()
    def initialize(self, z: Tensor) -> None:
        """Start from the node's own value distribution of the warm-start embeddings ``z``."""
        self.theta.zero_()
        self.frozen.fill_(False)
        self.dim_scale, self.dim_center = None, None
        if self.center:
            self.dim_center = torch.stack([z[:self.n_users].mean(dim=0), z[self.n_users:].mean(dim=0)])
        x = self._normalized(z)
        if self.equalize:
            self.dim_scale = x.pow(2).mean(dim=0).sqrt().clamp_min(1e-6)
            x = self._normalized(z)
        mean, std = self._statistics(x)
        self.fixed_mean.copy_(mean)
        self.fixed_std.copy_(std)

    def _refined_statistics(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Each grid's centre and spread under (b): the node's statistics corrected by its refined theta."""
        mean, std = self._statistics(z) if self.track_stats else (self.fixed_mean, self.fixed_std)
        theta = self._refined_theta(len(z))
        # The node's grid, its step scaled by exp(rho~) and its centre shifted by delta~ node stds.
        return mean + std.clamp_min(1e-8) * theta[:, 1:], std * torch.exp(theta[:, :1])

    @torch.no_grad()
    def freeze(self, z: Tensor) -> None:
        """End the refinement (b): fix every node's grid where it stands for final embeddings ``z``.

        Why: on MovieLens-1M a grid that keeps moving with the embeddings trains worse than a fixed one;
        refining first and then freezing is the schedule that would keep what refinement found (there it
        did not close the gap: docs/method.md).
        """
        mean, std = self._refined_statistics(self._normalized(z))
        self.fixed_mean.copy_(mean)
        self.fixed_std.copy_(std)
        self.frozen.fill_(True)

    def node_parameters(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if not self.dynamic or self.frozen:
            return gaussian_grid(self.fixed_mean, self.fixed_std, self.bits, self.clip)
        return gaussian_grid(*self._refined_statistics(z), self.bits, self.clip)

    def round(self, u: Tensor) -> Tensor:
        if self.estimator == "ste":
            return super().round(u)
        return _GraphRelationAwareRound.apply(u, self.influence, self.eta)


def graph_influence(adjacency: Tensor) -> Tensor:
    """``w_v``: node v's mass in the symmetric normalised adjacency (row = column), scaled to mean 1."""
    mass = torch.sparse.mm(adjacency, torch.ones(adjacency.shape[0], 1, device=adjacency.device))
    return (mass / mass.mean().clamp_min(math.ulp(1.0))).squeeze(1)
