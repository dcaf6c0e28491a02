"""Service internals: index kinds agree, concurrent misses computed once, user codes round-trip."""

import asyncio
import re
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from contracts.versions import read_current
from model.tables import QuantizedTable
from service.core.config import Settings
from service.core.metrics import Metrics
from service.engine.index import CodeIndex, FloatIndex, build_index
from service.engine.model import ServedModel
from service.engine.recommender import Recommender
from service.engine.registry import ModelRegistry
from service.main import open_store
from training.evaluate import metrics_from_hits, user_metrics


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


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_both_indexes_rank_like_the_offline_evaluator_with_centring(bits):
    """Centred tables at each width: per-user Recall/NDCG@20 from the served top-20 equal the evaluator's."""
    items, users = _table(bits, n=3000, d=64, centred=True), _table(bits, n=200, d=64, seed=2, centred=True)
    rng = np.random.default_rng(3)
    seen = sp.csr_matrix((np.ones(200 * 30), (np.repeat(np.arange(200), 30), rng.integers(0, 3000, 200 * 30))),
                         shape=(200, 3000))
    seen.data[:] = 1
    relevant = sp.csr_matrix((np.ones(200 * 20), (np.repeat(np.arange(200), 20), rng.integers(0, 3000, 200 * 20))),
                             shape=(200, 3000))
    relevant = ((relevant - relevant.multiply(seen)) > 0).astype(np.float64).tocsr()
    user_vectors, item_vectors = users.dequantize(), items.dequantize()
    offline = user_metrics(torch.from_numpy(user_vectors), torch.from_numpy(item_vectors), seen, relevant, (20,))
    exact = user_vectors.astype(np.float64) @ item_vectors.astype(np.float64).T
    for index in (CodeIndex(items), FloatIndex(item_vectors)):
        tops = [index.search(user_vectors[u], 20, seen[u].indices)[0] for u in range(200)]
        for u, top in enumerate(tops):  # rank by rank, the exact scores of the evaluator's order (ties aside)
            masked = np.where(seen[u].toarray()[0] > 0, -np.inf, exact[u])
            np.testing.assert_allclose(exact[u, top], np.sort(masked)[::-1][:20], rtol=1e-6, atol=1e-6)
        hits = torch.from_numpy(np.stack([relevant[u].toarray()[0][top] > 0 for u, top in enumerate(tops)]))
        served = metrics_from_hits(hits, torch.from_numpy(np.diff(relevant.indptr)), (20,))
        for name, values in served.items():
            np.testing.assert_allclose(values.numpy(), offline[name], atol=1e-12, err_msg=f"{index.kind} {name}")


def test_memory_per_item_of_each_index():
    table = _table(2, d=64)
    assert CodeIndex(table).bytes_per_item() == 16 + 4  # 64 dims x 2 bits + float16 scale and offset
    assert FloatIndex(table.dequantize()).bytes_per_item() == 64 * 4 + 24


def test_codes_index_resident_memory_is_at_most_24_bytes_per_item():
    """Measured, not computed: process RSS growth while indexing 1M items of 2 bits, d = 64."""
    probe = ("import numpy as np\n"
             "from model.tables import QuantizedTable\n"
             "from service.engine.index import CodeIndex\n"
             "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
             "def table(n):\n"
             "    rng = np.random.default_rng(0)\n"
             "    return QuantizedTable(rng.integers(0, 4, (n, 64), dtype=np.uint8), "
             "rng.random(n).astype(np.float16), rng.random(n).astype(np.float16), 2)\n"
             "CodeIndex(table(10)).search(np.ones(64, np.float32), 10, np.array([1]))  # compile first\n"
             "big = table(1_000_000)\n"
             "before = rss()\n"
             "index = CodeIndex(big)\n"
             "index.search(np.ones(64, np.float32), 10, np.array([1]))\n"
             "print((rss() - before) / 1_000_000)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert float(out) <= 24, f"{out.strip()} B per item"


@pytest.mark.parametrize("kind", ["codes", "float"])
def test_add_appends_items_that_search_like_a_fresh_index(kind):
    table = _table(2, n=500, d=32, centred=True)
    head, tail = (QuantizedTable(table.codes[rows], table.scale[rows], table.offset[rows], table.bits,
                                 table.dim_scale, table.dim_center) for rows in (slice(0, 300), slice(300, 500)))
    grown, fresh = build_index(kind, head), build_index(kind, table)
    grown.add(tail)
    assert grown.n_items == 500
    rng = np.random.default_rng(4)
    for _ in range(10):
        query, exclude = rng.standard_normal(32).astype(np.float32), rng.choice(500, 40, replace=False)
        (rows_g, scores_g), (rows_f, scores_f) = grown.search(query, 15, exclude), fresh.search(query, 15, exclude)
        np.testing.assert_array_equal(rows_g, rows_f)
        np.testing.assert_array_equal(scores_g, scores_f)


def test_codes_index_refuses_items_of_another_quantizer():
    index = CodeIndex(_table(2, centred=True))
    with pytest.raises(ValueError, match="4 bits and width 24, the index 2 and 24"):
        index.add(_table(4, centred=True))
    other = _table(2, centred=True)
    with pytest.raises(ValueError, match="their dim_center differs"):
        index.add(QuantizedTable(other.codes, other.scale, other.offset, 2, other.dim_scale, -other.dim_center))
    assert index.n_items == 400


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


def test_a_miss_answers_without_waiting_for_its_cache_write(trained, redis_url):
    """The cache write is off the response path: a store whose write never completes does not delay the answer,
    and the body it is handed is the cached form of the answer."""
    settings = Settings(model_dir=trained, redis_url=redis_url, reload_poll_seconds=0)
    written: list[bytes] = []

    async def scenario():
        registry = ModelRegistry(trained, "codes", Metrics())
        await registry.reload()
        store = open_store(settings)
        never = asyncio.Event()

        async def stuck_write(user_id, version, k, generation, body, ttl):
            written.append(body)
            await never.wait()

        store.write_cached = stuck_write
        recommender = Recommender(registry, store, settings, Metrics())
        user = next(iter(registry.model.users))
        body, cached = await asyncio.wait_for(recommender.recommend(user, 7), timeout=10)
        await asyncio.sleep(0)  # let the background write start
        pending = list(recommender._writes)
        for task in pending:
            task.cancel()
        await store.close()
        return body, cached, len(pending)

    body, cached, pending = asyncio.run(scenario())
    assert not cached and pending == 1
    assert written == [body.replace(b'"cached":false}', b'"cached":true}')]


def test_faiss_loads_quietly_and_says_which_build(tmp_path):
    probe = ("import logging, sys\n"
             "logging.basicConfig(level=logging.INFO, stream=sys.stdout)\n"
             "from service.engine.faiss_build import describe\n"
             "print('build:', describe())\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "ModuleNotFoundError" not in out and "Could not load" not in out
    assert re.search(r"build: \d+\.\d+\.\d+, \S", out)
