"""Baselines (LSQ, N2UQ-style, BiGeaR-style): forward values, gradients, stored bytes, end to end."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from cli.main import main
from contracts.versions import read_current
from model.baselines import BiGeaRQuantizer, LSQQuantizer, N2UQQuantizer
from model.graph import normalized_adjacency
from model.lightgcn import LightGCN
from model.tables import QuantizedTable
from tests.conftest import FAST
from training.config import TrainConfig

# One user row and one item row (n_users = 1): each table gets its own parameters.
X = torch.tensor([[-3.0, -0.7, 0.2, 0.9], [0.1, -0.1, 0.6, -2.0]])


def _tables(encoded, bits: int, n_users: int) -> tuple[QuantizedTable, QuantizedTable]:
    """User and item tables as the pipeline stores them (per-table parameters: users, items)."""
    codes, scale, offset = encoded.codes.numpy(), encoded.scale.numpy(), encoded.offset.numpy()
    sides = (slice(0, n_users), slice(n_users, None))
    params = sides if len(scale) == len(codes) else (slice(0, 1), slice(1, 2))
    return tuple(QuantizedTable(codes[side], scale[p], offset[p], bits) for side, p in zip(sides, params, strict=True))


def _lsq(bits: int, steps: tuple[float, float]) -> LSQQuantizer:
    quantizer = LSQQuantizer(bits, n_users=1)
    with torch.no_grad():
        quantizer.step.copy_(torch.tensor(steps))
    return quantizer


def test_lsq_forward_is_a_symmetric_grid_per_table():
    # 2 bits: levels s * {-1.5, -0.5, 0.5, 1.5}; users s = 1, items s = 0.5.
    expected = torch.tensor([[-1.5, -0.5, 0.5, 0.5], [0.25, -0.25, 0.75, -0.75]])
    assert torch.equal(_lsq(2, (1.0, 0.5))(X), expected)
    # 1 bit: +-s/2, the sign times half the step.
    assert torch.equal(_lsq(1, (2.0, 2.0))(X), torch.sign(X))


def test_lsq_gradients_ste_inside_the_grid_and_scaled_step_gradient():
    quantizer = _lsq(2, (1.0, 0.5))
    x = X.clone().requires_grad_(True)
    quantizer(x).sum().backward()
    assert x.grad.shape == X.shape
    # STE: 1 where the value is inside the grid, 0 where clipped (-3 for users; -2 for items).
    assert torch.equal(x.grad, torch.tensor([[0.0, 1, 1, 1], [1, 1, 1, 0]]))
    # LSQ: d x_hat / d s = round(x/s + c) - c - x/s inside, +-c clipped; times 1/sqrt(n * Q_P).
    user = (-1.5 + (1 - 1.5 + 0.7) + (2 - 1.5 - 0.2) + (2 - 1.5 - 0.9)) / math.sqrt(4 * 2)
    assert quantizer.step.grad[0].item() == pytest.approx(user)
    assert quantizer.step.grad[0] < 0  # mostly a clipped negative value: a larger step lowers the loss


def test_lsq_initial_step_and_storage():
    z = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))
    quantizer = LSQQuantizer(2, n_users=4)
    quantizer.initialize(z)
    assert quantizer.step[0].item() == pytest.approx(2 * z[:4].abs().mean().item() / math.sqrt(2))
    encoded = quantizer.encode(z)
    assert encoded.scale.shape == (2,)
    users, items = _tables(encoded, 2, n_users=4)
    assert users.stored_bytes == 4 * 8 * 2 // 8 + 2 + 2  # codes at 2 bits + one float16 scale and offset
    assert items.stored_bytes == 6 * 8 * 2 // 8 + 2 + 2
    decoded = np.concatenate([users.dequantize(), items.dequantize()])
    # Same codes; only the float16 parameters differ (a different code would be a whole step off).
    assert np.allclose(decoded, quantizer(z).detach().numpy(), atol=0.01)


def _n2uq() -> N2UQQuantizer:
    """2 bits, users: intervals [0,1), [1,3), [3,4) -> thresholds 0.5, 2, 3.5; outputs 0, 1, 2, 3."""
    quantizer = N2UQQuantizer(2, n_users=1)
    with torch.no_grad():
        quantizer.start.zero_()
        quantizer.widths.copy_(torch.tensor([[1.0, 2.0, 1.0], [1.0, 1.0, 1.0]]))
        quantizer.out_scale.fill_(1.0)
        quantizer.out_offset.zero_()
    return quantizer


def test_n2uq_thresholds_are_learned_and_outputs_uniform():
    quantizer = _n2uq()
    assert torch.equal(quantizer.thresholds(0), torch.tensor([0.5, 2.0, 3.5]))
    x = torch.tensor([[-1.0, 0.4, 0.6, 1.9], [2.1, 3.4, 3.6, 9.0]])
    # Items have equal widths: thresholds 0.5, 1.5, 2.5.
    assert torch.equal(quantizer(x), torch.tensor([[0.0, 0.0, 1.0, 1.0], [2.0, 3.0, 3.0, 3.0]]))
    encoded = quantizer.encode(torch.stack([x[1], x[1]]))
    assert encoded.codes[0].tolist() == [2, 2, 3, 3]  # user thresholds
    assert encoded.codes[1].tolist() == [2, 3, 3, 3]  # item thresholds


def test_n2uq_generalized_ste_gradients():
    quantizer = _n2uq()
    x = torch.tensor([[-1.0, 0.4, 1.9, 3.6], [9.0, 0.4, 1.4, 2.6]], requires_grad=True)
    quantizer(x).sum().backward()
    # dq/dx = out_scale / width of the value's interval; 0 outside the thresholds' range.
    assert torch.equal(x.grad, torch.tensor([[0.0, 1.0, 0.5, 1.0], [0.0, 1.0, 1.0, 1.0]]))
    # Moving the start right lowers every in-range value's position: negative gradients.
    assert quantizer.start.grad[0] < 0 and quantizer.start.grad[1] < 0
    assert quantizer.widths.grad.shape == (2, 3)
    assert quantizer.out_scale.grad[0].item() == pytest.approx(0 + 0 + 1 + 3)  # sum of codes


def test_n2uq_starts_as_the_uniform_grid_and_storage():
    z = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))
    quantizer = N2UQQuantizer(4, n_users=4)
    quantizer.initialize(z)
    widths = quantizer.widths.detach()
    assert torch.allclose(widths, widths[:, :1].expand_as(widths))  # equal intervals: uniform thresholds
    assert torch.allclose(quantizer.out_scale, widths[:, 0])
    users, items = _tables(quantizer.encode(z), 4, n_users=4)
    assert users.stored_bytes == 4 * 8 * 4 // 8 + 4 and items.stored_bytes == 6 * 8 * 4 // 8 + 4
    decoded = np.concatenate([users.dequantize(), items.dequantize()])
    # Same codes; only the float16 parameters differ (a different code would be a whole step off).
    assert np.allclose(decoded, quantizer(z).detach().numpy(), atol=0.01)


def test_bigear_forward_per_layer_sign_times_mean_magnitude():
    quantizer = BiGeaRQuantizer(n_users=1, layers=1)  # 2 layers, weights 1/2 and 1
    x = torch.tensor([[1.0, -3.0, 0.5, 0.5], [0.0, 2.0, -1.0, 1.0]])  # per row: E^(0) | E^(1), d = 2
    expected = torch.tensor([[0.5 * 2, -0.5 * 2, 0.5, 0.5], [0.5 * 1, 0.5 * 1, -1.0, 1.0]])
    assert torch.equal(quantizer(x), expected)


def test_bigear_dirac_delta_gradient():
    quantizer = BiGeaRQuantizer(n_users=1, layers=1, gamma=2.0)
    x = torch.tensor([[1.0, -3.0, 0.05, 0.5], [0.0, 2.0, -1.0, 1.0]], requires_grad=True)
    quantizer(x).sum().backward()
    assert x.grad.shape == x.shape
    weights = torch.tensor([0.5, 0.5, 1.0, 1.0])
    delta = 2.0 / math.sqrt(math.pi) * torch.exp(-(2.0 * x.detach()) ** 2)
    assert torch.allclose(x.grad, weights * delta.clamp(max=1.0))
    assert (x.grad > 0).all()  # the sign's surrogate derivative is positive everywhere
    assert x.grad[0, 2] > x.grad[0, 3] > x.grad[0, 0] > x.grad[0, 1]  # largest near zero


def test_bigear_codes_decode_to_the_trained_vectors_and_storage():
    layers, dim = 3, 8
    quantizer = BiGeaRQuantizer(n_users=4, layers=layers)
    x = torch.randn(10, (layers + 1) * dim, generator=torch.Generator().manual_seed(0))
    encoded = quantizer.encode(x)
    assert encoded.codes.shape == (10, 32) and encoded.scale.shape == (10, 4)
    users, items = _tables(encoded, 1, n_users=4)
    assert users.segments == 4
    assert users.stored_bytes == 4 * 32 // 8 + 4 * 4 * (2 + 2)  # 1 bit a value + float16 pair per layer
    decoded = np.concatenate([users.dequantize(), items.dequantize()])
    assert np.allclose(decoded, quantizer(x).numpy(), rtol=1e-3, atol=1e-4)


def test_lightgcn_hands_every_layer_to_a_per_layer_quantizer():
    model = LightGCN(2, 3, dim=4, layers=2)
    adjacency = normalized_adjacency(np.array([[0, 0], [1, 2], [1, 1]]), 2, 3)
    assert model.quantizer_input(adjacency).shape == (5, 4)
    model.quantizer = BiGeaRQuantizer(2, layers=2)
    assert model.quantizer_input(adjacency).shape == (5, 12)
    assert model(adjacency).shape == (5, 12)


def test_bigear_needs_one_bit():
    with pytest.raises(ValueError, match="bits = 1"):
        TrainConfig(method="bigear", bits=2)


@pytest.fixture(scope="module")
def warm_model_dir(trained, tmp_path_factory):
    """A model dir holding only the session's cached fp32 warm start (its FAST settings)."""
    model_dir = tmp_path_factory.mktemp("baselines")
    shutil.copytree(trained / ".cache", model_dir / ".cache")
    return model_dir


@pytest.mark.parametrize(("method", "bits"), [("lsq", 2), ("n2uq", 2), ("bigear", 1)])
def test_train_end_to_end(warm_model_dir, method, bits):
    assert main(["train", *FAST, "--qat-epochs", "1", "--method", method, "--bits", str(bits),
                 "--model-dir", str(warm_model_dir), "--version", f"{method}-{bits}", "--no-publish"]) == 0
    artifact = read_current(warm_model_dir / f"{method}-{bits}")
    manifest = artifact.manifest
    assert manifest.method == method and manifest.bits == bits
    assert manifest.training.epochs_run[f"{method}-{bits}bit"] >= 1
    width = 16 * 3 if method == "bigear" else 16  # FAST: d = 16, L = 2
    assert artifact.user.dim == artifact.item.dim == width
    assert manifest.metrics.test["recall@20"] > 0.02
    history = json.loads((warm_model_dir / f"{method}-{bits}" / "history.json").read_text())
    assert {r["stage"] for r in history} == {"fp32", f"{method}-{bits}bit"}
