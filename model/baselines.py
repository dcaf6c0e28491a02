"""Quantization baselines trained in the same loop as GNAQ: LSQ, N2UQ-style and BiGeaR-style.

All three warm-start from the fp32 LightGCN and are subclasses of ``EmbeddingQuantizer``, so training,
validation-based selection, encoding and serving are shared with GNAQ (docs/method.md, "Baselines").

* ``LSQQuantizer`` (Esser et al., ICLR 2020): one learnable step per table on a symmetric grid.
* ``N2UQQuantizer`` (Liu et al., CVPR 2022): learnable input thresholds, uniform output levels,
  trained with the generalized straight-through estimator (G-STE).
* ``BiGeaRQuantizer`` (Chen et al., KDD 2022): 1-bit ``sign * mean|.|`` codes of every propagation
  layer, served as their layer-weighted concatenation, trained with a Dirac-delta approximation of
  sign's derivative.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model.lightgcn import gather_rows
from model.quantizers import _MIN_SCALE, EmbeddingQuantizer, QuantizedCodes, gaussian_grid


def _tables(n_users: int, n_nodes: int) -> tuple[slice, slice]:
    """Row ranges of the user table and the item table."""
    return slice(0, n_users), slice(n_users, n_nodes)


def _per_row(values: Tensor, n_users: int, n_nodes: int) -> Tensor:
    """``(2,)`` per-table values (users, items) as an ``(N, 1)`` column, one value per row."""
    return torch.cat([values[:1].expand(n_users), values[1:].expand(n_nodes - n_users)]).unsqueeze(1)


def _scale_gradient(x: Tensor, factor: Tensor) -> Tensor:
    """``x`` in the forward pass; its gradient multiplied by ``factor`` in the backward pass."""
    scaled = x * factor
    return (x - scaled).detach() + scaled


class LSQQuantizer(EmbeddingQuantizer):
    """Learned step size quantization, one step per table (users, items).

    Codes ``q in {0..2^b-1}`` decode to ``s * (q - (2^b-1)/2)``: a symmetric grid around zero (LSQ's
    signed grid ``{-2^(b-1)..2^(b-1)-1}`` has no 1-bit form with both signs; this one does). The step
    ``s`` is trained through the STE with LSQ's gradient scale ``1/sqrt(n * Q_P)`` (``n`` values quantized
    with that step, ``Q_P = 2^(b-1)`` positive levels), which keeps step updates in proportion to the
    embedding updates; values clipped to the outermost levels get no gradient, but do reach ``s``.
    """

    per_node = False

    def __init__(self, bits: int, n_users: int) -> None:
        super().__init__(bits, n_users)
        self.step = nn.Parameter(torch.ones(2))  # users, items

    @property
    def positive_levels(self) -> int:
        """``Q_P`` of LSQ's formulas: the number of grid levels above zero."""
        return 2 ** (self.bits - 1)

    @torch.no_grad()
    def initialize(self, z: Tensor) -> None:
        """LSQ's initial step ``2 * mean|z| / sqrt(Q_P)`` per table, from the warm-start embeddings."""
        for k, rows in enumerate(_tables(self.n_users, len(z))):
            self.step[k] = 2 * z[rows].abs().mean() / math.sqrt(self.positive_levels)

    def node_parameters(self, z: Tensor) -> tuple[Tensor, Tensor]:
        n_values = torch.tensor([self.n_users, len(z) - self.n_users], device=z.device) * z.shape[1]
        grad_scale = (n_values * self.positive_levels).clamp_min(1).float().rsqrt()
        step = _scale_gradient(self.step, grad_scale).clamp_min(_MIN_SCALE)
        scale = _per_row(step, self.n_users, len(z))
        return scale, -scale * self.levels / 2

    def record(self) -> dict:
        return {"step": self.step.detach().cpu().tolist()}


class N2UQQuantizer(EmbeddingQuantizer):
    """Nonuniform-to-uniform quantization: learned input thresholds, uniform output levels, per table.

    Each table has a start ``T_0`` and ``2^b - 1`` positive interval widths ``a_k`` (learned), which
    define the piecewise-linear ``F``: 0 below ``T_0``, rising by 1 across each interval, ``2^b - 1``
    above the last. The code is ``q = round(F(x))``, i.e. the thresholds lie mid-interval and may be
    spaced non-uniformly, while the output levels ``o + s * q`` are uniform (so codes stay uniform and
    are stored and served like any other); ``s`` and ``o`` are learned too. G-STE: the backward pass
    uses ``dq/dx = F'(x) = 1 / a_k`` inside interval ``k`` and 0 outside ``[T_0, T_end]``, and the
    thresholds get their gradient through ``F``. With equal widths it is the STE of a uniform grid.
    """

    per_node = False

    def __init__(self, bits: int, n_users: int) -> None:
        super().__init__(bits, n_users)
        self.start = nn.Parameter(torch.zeros(2))  # per table: users, items
        self.widths = nn.Parameter(torch.ones(2, self.levels))
        self.out_scale = nn.Parameter(torch.ones(2))
        self.out_offset = nn.Parameter(torch.zeros(2))

    @torch.no_grad()
    def initialize(self, z: Tensor) -> None:
        """Start as the per-table MSE-optimal uniform grid for a Gaussian of the table's mean and std."""
        for k, rows in enumerate(_tables(self.n_users, len(z))):
            table = z[rows]
            scale, offset = gaussian_grid(table.mean(), table.std(unbiased=False), self.bits, clip=1.0)
            self.start[k], self.out_offset[k] = offset, offset
            self.widths[k], self.out_scale[k] = scale, scale

    def _intervals(self, table: int) -> tuple[Tensor, Tensor]:
        """Starts ``T_0..T_(n-1)`` and widths ``a_0..a_(n-1)`` of the intervals of ``table`` (0 users, 1 items)."""
        widths = self.widths[table].clamp_min(_MIN_SCALE)
        return self.start[table] + torch.cumsum(widths, 0) - widths, widths

    def thresholds(self, table: int) -> Tensor:
        """Input values where the code of ``table`` steps up: the ``2^b - 1`` interval midpoints."""
        starts, widths = self._intervals(table)
        return starts + widths / 2

    def _position(self, x: Tensor, table: int) -> Tensor:
        """``F(x)``: the continuous code position whose rounding is the code (see the class doc)."""
        starts, widths = self._intervals(table)
        interval = torch.bucketize(x.detach(), starts[1:].detach(), right=True)
        bounds = torch.stack([starts, widths], dim=1)  # (levels, 2): one row per interval
        start, width = gather_rows(bounds, interval).unbind(-1)
        return interval + ((x - start) / width).clamp(0, 1)

    def positions(self, z: Tensor) -> Tensor:
        """``F`` of every value, each table with its own thresholds."""
        return torch.cat([self._position(z[rows], k) for k, rows in enumerate(_tables(self.n_users, len(z)))])

    def node_parameters(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Output grid ``(scale, offset)`` per row; the codes come from the thresholds, not from these."""
        scale = _per_row(self.out_scale.clamp_min(_MIN_SCALE), self.n_users, len(z))
        return scale, _per_row(self.out_offset, self.n_users, len(z))

    def forward(self, z: Tensor) -> Tensor:
        scale, offset = self.node_parameters(z)
        return offset + scale * self.round(self.positions(z))  # STE on round(F): the G-STE

    @torch.no_grad()
    def encode(self, z: Tensor) -> QuantizedCodes:
        codes = torch.round(self.positions(z)).to(torch.uint8)
        scale16 = self.out_scale.clamp_min(_MIN_SCALE).to(torch.float16)
        return QuantizedCodes(codes, scale16, self.out_offset.to(torch.float16), None)

    def record(self) -> dict:
        return {"thresholds": [self.thresholds(k).detach().cpu().tolist() for k in (0, 1)],
                "out_scale": self.out_scale.detach().cpu().tolist(),
                "out_offset": self.out_offset.detach().cpu().tolist()}


class _ScaledSignDirac(torch.autograd.Function):
    """``alpha * sign(x)`` (0 counts as +); backward ``gamma/sqrt(pi) * exp(-(gamma x)^2)``, at most 1.

    BiGeaR's estimator: sign's derivative, a Dirac delta, approximated by a narrow Gaussian. As in the
    authors' code, the scale ``alpha`` is treated as a constant (no gradient) and not multiplied in.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, gamma: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.gamma = gamma
        return torch.where(x >= 0, alpha, -alpha)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        delta = ctx.gamma / math.sqrt(math.pi) * torch.exp(-(ctx.gamma * x) ** 2)
        return grad * delta.clamp(max=1.0), None, None


class BiGeaRQuantizer(EmbeddingQuantizer):
    """BiGeaR-style 1-bit codes of every layer, served as their layer-weighted concatenation.

    Input: the layers ``E^(0..L)`` side by side (``per_layer``). Each node's layer ``l`` becomes
    ``w_l * alpha_vl * sign(E^(l)_v)`` with ``alpha_vl = mean |E^(l)_v|`` and ``w_l = (l+1)/(L+1)``
    (BiGeaR's weights, growing with depth); the served vector is the concatenation over layers,
    ``(L+1) * d`` codes of 1 bit, and its inner products rank the items. Stored per node and layer:
    ``scale = 2 w_l alpha``, ``offset = -w_l alpha`` (code 1 -> ``+w_l alpha``, code 0 -> ``-w_l alpha``).
    """

    per_layer = True

    def __init__(self, n_users: int, *, layers: int, gamma: float = 1.0) -> None:
        super().__init__(1, n_users)
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.segments, self.gamma = layers + 1, gamma
        self.register_buffer("layer_weights", torch.arange(1, layers + 2, dtype=torch.float32) / (layers + 1))

    def _layers(self, x: Tensor) -> Tensor:
        """``(N, (L+1)*d)`` -> ``(N, L+1, d)``."""
        return x.reshape(len(x), self.segments, -1)

    def node_parameters(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(scale, offset)`` per node and layer, ``(N, L+1)`` each."""
        magnitude = self._layers(x).abs().mean(dim=2) * self.layer_weights
        return 2 * magnitude, -magnitude

    def forward(self, x: Tensor) -> Tensor:
        layers = self._layers(x)
        alpha = layers.abs().mean(dim=2, keepdim=True)
        binary = _ScaledSignDirac.apply(layers, alpha, self.gamma)
        return (binary * self.layer_weights[:, None]).reshape(x.shape)

    @torch.no_grad()
    def encode(self, x: Tensor) -> QuantizedCodes:
        scale, offset = self.node_parameters(x)
        return QuantizedCodes((x >= 0).to(torch.uint8), scale.to(torch.float16), offset.to(torch.float16), None)

    def record(self) -> dict:
        return {"segments": self.segments, "layer_weights": self.layer_weights.cpu().tolist(),
                "gamma": self.gamma}
