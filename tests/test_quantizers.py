"""Quantizers: what is trained (fake quantization) is what is encoded, stored and decoded."""

import numpy as np
import pytest
import torch

from model.graph import node_degrees, normalized_adjacency
from model.quantizers import GNAQQuantizer, UniformQuantizer, graph_influence
from model.tables import QuantizedTable

N_USERS, N_ITEMS, DIM = 6, 9, 16
PAIRS = np.array([[u, (u * 2 + k) % N_ITEMS] for u in range(N_USERS) for k in range(3)])


def _gnaq(bits: int = 2, pairs: np.ndarray = PAIRS, **switches) -> GNAQQuantizer:
    adjacency = normalized_adjacency(pairs, N_USERS, N_ITEMS)
    return GNAQQuantizer(bits, N_USERS, adjacency=adjacency,
                         degree=torch.from_numpy(node_degrees(pairs, N_USERS, N_ITEMS)),
                         influence=graph_influence(adjacency), layers=2, **switches)


def _decode(encoded, bits: int) -> np.ndarray:
    """Decode through QuantizedTable, the function the service uses."""
    codes, scale, offset = encoded.codes.numpy(), encoded.scale.numpy(), encoded.offset.numpy()
    dim_scale = None if encoded.dim_scale is None else encoded.dim_scale.numpy()
    if len(scale) == 2 and len(codes) != 2:  # per table: users, items
        scale = np.r_[[scale[0]] * N_USERS, [scale[1]] * N_ITEMS].astype(np.float16)
        offset = np.r_[[offset[0]] * N_USERS, [offset[1]] * N_ITEMS].astype(np.float16)
    centers = (None, None) if encoded.dim_center is None else encoded.dim_center.numpy()
    sides = (slice(0, N_USERS), slice(N_USERS, None))
    return np.concatenate([QuantizedTable(codes[side], scale[side], offset[side], bits, dim_scale, center).dequantize()
                           for side, center in zip(sides, centers, strict=True)])


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("switches", [{}, {"node_aware": False}, {"dynamic": False}, {"estimator": "ste"},
                                      {"equalize": False}, {"center": True}, {"center": True, "equalize": False},
                                      {"track_stats": False}, {"track_stats": False, "relative": True}])
def test_encoded_codes_decode_to_the_fake_quantized_values(bits, switches):
    generator = torch.Generator().manual_seed(bits)
    z = torch.randn(N_USERS + N_ITEMS, DIM, generator=generator) * torch.linspace(0.2, 2.0, N_USERS + N_ITEMS)[:, None]
    quantizer = _gnaq(bits, **switches)
    quantizer.initialize(z)
    encoded = quantizer.encode(z)
    assert encoded.codes.dtype == torch.uint8 and int(encoded.codes.max()) <= 2**bits - 1
    assert len(encoded.scale) == (N_USERS + N_ITEMS if switches.get("node_aware", True) else 2)
    decoded = _decode(encoded, bits)
    # Fake quantization uses float32 parameters, storage float16: they agree to float16 precision, except
    # that a value lying on a rounding boundary may land on the neighbouring level (rare).
    differs = np.abs(decoded - quantizer(z).detach().numpy()) > 0.01 * float(z.abs().max())
    assert differs.mean() < 0.01


def test_centring_stores_each_tables_mean_once_and_shrinks_the_error_of_a_shared_direction():
    generator = torch.Generator().manual_seed(0)
    shared = torch.linspace(-3.0, 3.0, DIM)  # a direction every item has: rounded in every row without centring
    z = torch.randn(N_USERS + N_ITEMS, DIM, generator=generator)
    z[N_USERS:] += shared
    errors = {}
    for center in (False, True):
        quantizer = _gnaq(center=center)
        quantizer.initialize(z)
        encoded = quantizer.encode(z)
        errors[center] = float(np.abs(_decode(encoded, 2) - z.numpy()).mean())
    assert encoded.dim_center.dtype == torch.float16 and encoded.dim_center.shape == (2, DIM)
    assert torch.allclose(encoded.dim_center[1].float(), z[N_USERS:].mean(0), atol=1e-2)
    assert errors[True] < 0.8 * errors[False]
    table = QuantizedTable(encoded.codes.numpy()[N_USERS:], encoded.scale.numpy()[N_USERS:],
                           encoded.offset.numpy()[N_USERS:], 2, encoded.dim_scale.numpy(),
                           encoded.dim_center[1].numpy())
    assert table.stored_bytes == N_ITEMS * (DIM * 2 // 8 + 4) + 2 * DIM * 2  # codes, scale+offset, g and mu


def test_node_aware_parameters_follow_each_nodes_spread():
    z = torch.randn(N_USERS + N_ITEMS, DIM)
    z[0] *= 10
    quantizer = _gnaq(equalize=False)
    quantizer.initialize(z)
    scale = quantizer.encode(z).scale.float()
    assert scale[0] > 5 * scale[1:].median()


def test_message_passing_mixes_neighbour_corrections():
    quantizer = _gnaq()
    with torch.no_grad():
        quantizer.theta[N_USERS + 0, 0] = 1.0  # item 0's step correction only
    refined = quantizer._refined_theta(N_USERS + N_ITEMS)
    neighbours_of_item0 = PAIRS[PAIRS[:, 1] == 0, 0]
    assert (refined[neighbours_of_item0, 0] > 0).all()  # its users feel it after one hop
    assert refined[N_USERS + 0, 0] < 1.0  # and it is averaged with its neighbourhood's
    isolated_user_row = refined[[u for u in range(N_USERS) if u not in neighbours_of_item0], 0]
    assert (isolated_user_row >= 0).all()


def test_refinement_is_the_layer_mean_over_the_row_normalised_graph():
    """(b)'s definition, ``1/(L+1) sum_k P^k theta`` with ``P = D^-1 A`` (an isolated node keeps ``theta / (L+1)``),
    although it is computed over the symmetric graph, as ``D^1/2 theta``."""
    pairs = PAIRS[PAIRS[:, 1] != 5]  # item 5 isolated
    quantizer = _gnaq(pairs=pairs)
    with torch.no_grad():
        quantizer.theta.copy_(torch.randn(N_USERS + N_ITEMS, 2, generator=torch.Generator().manual_seed(0)))
    a = np.zeros((N_USERS + N_ITEMS,) * 2)
    a[pairs[:, 0], N_USERS + pairs[:, 1]] = a[N_USERS + pairs[:, 1], pairs[:, 0]] = 1
    degree = a.sum(1, keepdims=True)
    p = np.divide(a, degree, out=np.zeros_like(a), where=degree > 0)
    theta = quantizer.theta.detach().double().numpy()
    expected = sum(np.linalg.matrix_power(p, k) @ theta for k in range(3)) / 3
    np.testing.assert_allclose(quantizer.refined_theta(N_USERS + N_ITEMS).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert np.allclose(expected[N_USERS + 5], theta[N_USERS + 5] / 3)


def test_graph_estimator_adds_a_pull_towards_the_grid_and_ste_does_not():
    z = torch.randn(N_USERS + N_ITEMS, DIM)
    grads = {}
    for estimator in ("ste", "graph"):
        quantizer = _gnaq(estimator=estimator, dynamic=False)
        quantizer.initialize(z)
        x = z.clone().requires_grad_(True)
        quantizer(x).sum().backward()
        grads[estimator] = x.grad
    assert not torch.allclose(grads["ste"], grads["graph"])
    scale, offset = quantizer.node_parameters(z)  # fixed: the same for any input
    u = (z / quantizer.dim_scale.half().float() - offset) / scale
    inside = (u > 0) & (u < 2**2 - 1)
    # The correction has the sign of the rounding residual: it moves u towards round(u).
    difference = (grads["graph"] - grads["ste"])[inside]
    residual = (u - torch.round(u))[inside]
    assert (torch.sign(difference) == torch.sign(residual))[residual.abs() > 1e-3].all()


def test_without_tracked_statistics_only_the_learned_corrections_move_the_grid():
    z = torch.randn(N_USERS + N_ITEMS, DIM)
    quantizer = _gnaq(track_stats=False)
    quantizer.initialize(z)
    start = quantizer.node_parameters(quantizer._normalized(z))
    moved = quantizer.node_parameters(quantizer._normalized(3 * z))  # the embeddings change: the grid does not
    assert all(torch.equal(a, b) for a, b in zip(start, moved, strict=True))
    with torch.no_grad():
        quantizer.theta[:, 0] = 0.5  # a learned wider step
    wider, _ = quantizer.node_parameters(quantizer._normalized(z))
    assert torch.allclose(wider, start[0] * torch.exp(torch.tensor(0.5)))


def test_relative_refinement_moves_grids_among_nodes_but_not_the_tables_own():
    z = torch.randn(N_USERS + N_ITEMS, DIM)
    quantizer = _gnaq(track_stats=False, relative=True)
    quantizer.initialize(z)
    x = quantizer._normalized(z)
    quantizer.theta.requires_grad_(False)
    start_scale, start_offset = quantizer.node_parameters(x)
    quantizer.theta.fill_(0.4)  # the same correction everywhere: nothing to redistribute
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in
               zip((start_scale, start_offset), quantizer.node_parameters(x), strict=True))
    quantizer.theta[:, 0] = torch.linspace(-1.0, 1.0, len(quantizer.theta)) ** 3  # uneven corrections
    scale, _ = quantizer.node_parameters(x)
    assert not torch.allclose(scale, start_scale)  # nodes' steps move relative to one another...
    log_ratio = torch.log(scale / start_scale).squeeze(1)
    for table in (slice(0, N_USERS), slice(N_USERS, None)):  # ...each table's geometric mean step does not
        assert abs(float(log_ratio[table].mean())) < 1e-5
    refined = quantizer.refined_theta(N_USERS + N_ITEMS)  # what the artifact stores for fold-in: the same
    assert torch.allclose(refined[N_USERS:].mean(dim=0), torch.zeros(2), atol=1e-6)


def test_freezing_keeps_the_refined_grid_and_stops_following_the_embeddings():
    z = torch.randn(N_USERS + N_ITEMS, DIM)
    quantizer = _gnaq()
    quantizer.initialize(z)
    with torch.no_grad():
        quantizer.theta[:, 0] = 0.3  # learned corrections: a wider step and a shifted centre
        quantizer.theta[:, 1] = -0.2
    refined = quantizer.node_parameters(quantizer._normalized(z))
    quantizer.freeze(z)
    assert bool(quantizer.frozen) and "frozen" in quantizer.state_dict()
    frozen = quantizer.node_parameters(quantizer._normalized(z))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(refined, frozen, strict=True))
    moved = quantizer.node_parameters(quantizer._normalized(3 * z))  # the embeddings move on, the grid stays
    assert all(torch.equal(a, b) for a, b in zip(frozen, moved, strict=True))
    with torch.no_grad():
        quantizer.theta.zero_()  # theta no longer enters the grid either
    assert torch.equal(quantizer.node_parameters(quantizer._normalized(z))[0], frozen[0])
    quantizer.initialize(z)  # a new stage starts dynamic again
    assert not bool(quantizer.frozen)


def test_fixed_parameters_are_not_trained():
    quantizer = _gnaq(dynamic=False)
    assert not quantizer.theta.requires_grad


def test_uniform_per_tensor_shares_one_grid_per_table():
    z = torch.randn(N_USERS + N_ITEMS, DIM)
    encoded = UniformQuantizer(2, N_USERS, per_node=False).encode(z)
    assert encoded.scale.shape == (2,)
    per_node = UniformQuantizer(2, N_USERS, per_node=True).encode(z)
    error = {name: np.abs(_decode(e, 2) - z.numpy()).mean() for name, e in (("tensor", encoded), ("node", per_node))}
    assert error["node"] < error["tensor"]


def test_unsupported_bits_are_rejected():
    with pytest.raises(ValueError, match="bits must be one of"):
        UniformQuantizer(9, N_USERS, per_node=True)
