"""Service internals: index kinds agree, concurrent misses computed once, user codes round-trip."""

import asyncio
import re
import subprocess
import sys

import numpy as np
import pytest

from contracts.versions import read_current
from model.tables import QuantizedTable
from service.core.config import Settings
from service.core.metrics import Metrics
from service.engine.index import CodeIndex, FloatIndex, build_index
from service.engine.model import ServedModel
from service.engine.recommender import Recommender
from service.engine.registry import ModelRegistry
from service.main import open_store


def _table(bits, n=400, d=24, per_node=True, seed=0, centred=False):
    rng = np.random.default_rng(seed)
    rows = n if per_node else 1
    return QuantizedTable(rng.integers(0, 2**bits, (n, d)).astype(np.uint8),
                          (rng.random(rows) + 0.1).astype(np.float16), rng.standard_normal(rows).astype(np.float16),
                          bits, (rng.random(d) + 0.5).astype(np.float16),
                          rng.standard_normal(d).astype(np.float16) if centred else None)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize(("per_node", "centred"), [(True, False), (False, False), (True, True)])
def test_code_index_ranks_like_the_dequantized_float_index(bits, per_node, centred):
    table = _table(bits, per_node=per_node, centred=centred)
    codes, flat = CodeIndex(table), FloatIndex(table.dequantize())
    rng = np.random.default_rng(1)
    for _ in range(20):
        query = rng.standard_normal(table.dim).astype(np.float32)
        exclude = rng.choice(table.n_rows, 25, replace=False)
        exact = table.dequantize().astype(np.float64) @ query.astype(np.float64)
        np.testing.assert_allclose(codes.scores(query), exact, rtol=1e-5, atol=1e-4)
        (rows_c, scores_c), (rows_f, scores_f) = codes.search(query, 10, exclude), flat.search(query, 10, exclude)
        assert not set(rows_c) & set(exclude) and not set(rows_f) & set(exclude)
        np.testing.assert_allclose(exact[rows_c], exact[rows_f], rtol=1e-5)  # same ranking up to exact ties
        np.testing.assert_allclose(scores_c, scores_f, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("per_node", [True, False])
def test_rows_added_to_an_index_score_as_if_built_with_it(per_node):
    """``ItemIndex.add`` (issue 20): rows appended after the build rank exactly as in an index built with them."""
    table, extra = _table(2, n=400, per_node=per_node, centred=True), _table(2, n=7, seed=3, centred=True)
    extra = QuantizedTable(extra.codes, extra.scale, extra.offset, 2, table.dim_scale, table.dim_center)
    whole = np.concatenate([table.dequantize(), extra.dequantize()])
    query = np.random.default_rng(2).standard_normal(table.dim).astype(np.float32)
    exact = whole.astype(np.float64) @ query.astype(np.float64)
    for index in (build_index("codes", table), build_index("float", table)):
        for n in range(extra.n_rows):  # one at a time, as the service adds them
            index.add(QuantizedTable(extra.codes[n:n + 1], extra.scale[n:n + 1], extra.offset[n:n + 1], 2,
                                     table.dim_scale, table.dim_center))
        assert index.n_items == 407
        rows, scores = index.search(query, 407, np.array([0, 401]))
        assert len(rows) == 405 and 0 not in rows and 401 not in rows
        np.testing.assert_allclose(scores, exact[rows], rtol=1e-4, atol=1e-4)
        assert (np.diff(exact[rows]) <= 1e-4).all()
    with pytest.raises(TypeError, match="2-bit codes"):
        build_index("codes", table).add(_table(4, n=1))


def test_memory_per_item_of_each_index():
    table = _table(2, d=64)
    assert CodeIndex(table).bytes_per_item() == 16 + 4  # 64 dims x 2 bits + float16 scale and offset
    assert FloatIndex(table.dequantize()).bytes_per_item() == 64 * 4 + 24


def test_search_returns_fewer_when_almost_everything_is_excluded():
    table = _table(2, n=5)
    for index in (build_index("codes", table), build_index("float", table)):
        rows, _ = index.search(np.ones(table.dim, np.float32), 10, np.array([0, 1, 2]))
        assert sorted(rows.tolist()) == [3, 4]


def test_user_codes_round_trip(trained):
    model = ServedModel.load(trained / read_current(trained).version, "codes")
    table = model.foldin.user(np.array([0, 3, 7]))
    np.testing.assert_array_equal(model.foldin.decode_user(table.row_bytes()).dequantize(), table.dequantize())
    assert len(table.row_bytes()) == 4 + model.dim  # 8-bit rows (model.foldin.ROW_BITS) and a float16 pair


def test_concurrent_misses_on_one_key_are_computed_once(trained, redis_url):
    settings = Settings(model_dir=trained, redis_url=redis_url, reload_poll_seconds=0)
    metrics = Metrics()

    async def scenario():
        registry = ModelRegistry(trained, "float", metrics)
        await registry.reload()
        store = open_store(settings)
        recommender = Recommender(registry, store, settings, metrics)
        user = next(iter(registry.model.users))
        bodies = await asyncio.gather(*(recommender.recommend(user, 10) for _ in range(20)))
        await store.close()
        return bodies

    bodies = asyncio.run(scenario())
    # Late readers may already find the cached body; either way every answer is the same list.
    assert len({body.replace(b'"cached":true', b'"cached":false') for body, _ in bodies}) == 1
    searches = metrics.registry.get_sample_value("gnaq_search_duration_seconds_count", {"index": "float"})
    assert searches == 1  # 20 concurrent misses, one search (the smoke query runs outside the recommender)


def test_faiss_loads_quietly_and_says_which_build(tmp_path):
    probe = ("import logging, sys\n"
             "logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
             "from service.engine.faiss_build import describe\n"
             "print('build:', describe())\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "ModuleNotFoundError" not in out and "Could not load" not in out
    assert re.search(r"build: \d+\.\d+\.\d+, \S", out)
