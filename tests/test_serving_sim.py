"""minilora.course.serving_sim: chapter 13's Zipf trace, adapter cache and batch scheduler, checked by hand."""
import math

import pytest

from minilora.course.models import AssetsMissing
from minilora.course.serving_sim import (
    measure_load_seconds,
    schedule_batches,
    simulate_cache,
    simulate_scheduler,
    simulate_two_tier,
    zipf_trace,
)

COSTS = dict(arrival_gap_s=0.004, batch_cost_s=0.025, adapter_cost_s=0.005)


def test_trace_is_deterministic_per_seed_and_in_range():
    a = zipf_trace(2000, 50, s=1.1, seed=3)
    assert a == zipf_trace(2000, 50, s=1.1, seed=3)
    assert a != zipf_trace(2000, 50, s=1.1, seed=4)
    assert len(a) == 2000 and min(a) >= 0 and max(a) <= 49
    assert zipf_trace(5, 1) == [0] * 5


@pytest.mark.parametrize("n, s", [(100, 1.0), (1000, 1.1), (20, 0.0)])
def test_trace_is_zipf_shaped(n, s):
    trace = zipf_trace(20_000, n, s=s, seed=0)
    harmonic = sum((k + 1) ** -s for k in range(n))
    share = trace.count(0) / len(trace)
    assert share == pytest.approx(1 / harmonic, abs=0.01)  # 20,000 draws: the standard error is below 0.003
    if s > 0:  # popularity falls with the id
        assert trace.count(0) > trace.count(1) > trace.count(9)


def test_lru_and_fifo_on_hand_made_traces():
    # 0 1 2 0 3 0 with 2 slots: 0, 1 load; 2 evicts 0; 0 evicts 1; 3 evicts 2; 0 hits. Both policies: 1 hit.
    for policy in ("lru", "fifo"):
        st = simulate_cache([0, 1, 2, 0, 3, 0], 2, policy)
        assert (st.requests, st.hits, st.misses) == (6, 1, 5)
        assert st.hit_rate == pytest.approx(1 / 6) and st.loads_per_1000 == pytest.approx(5000 / 6)
    # 0 1 0 2 0: LRU's hit on 0 makes 1 the victim of 2, so the last 0 hits; FIFO evicts 0 (loaded first).
    assert simulate_cache([0, 1, 0, 2, 0], 2, "lru").hits == 2
    assert simulate_cache([0, 1, 0, 2, 0], 2, "fifo").hits == 1


@pytest.mark.parametrize("n, s", [(1000, 1.1), (100, 0.8)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lru_beats_fifo_on_zipf(n, s, seed):
    trace = zipf_trace(10_000, n, s=s, seed=seed)
    for slots in (8, 32):
        assert simulate_cache(trace, slots, "lru").hit_rate >= simulate_cache(trace, slots, "fifo").hit_rate


def test_a_cache_as_large_as_the_catalogue_loads_each_adapter_once():
    trace = zipf_trace(3000, 40, s=0.8, seed=1)
    for policy in ("lru", "fifo"):
        for slots in (40, 100):
            assert simulate_cache(trace, slots, policy).misses == len(set(trace))


def test_two_tier_counts():
    trace = zipf_trace(5000, 300, s=1.0, seed=2)
    for policy in ("lru", "fifo"):
        st = simulate_two_tier(trace, 8, 64, policy)
        assert st.gpu_hits + st.slot_copies == st.requests == 5000
        assert st.slot_copies == st.host_hits + st.disk_loads
        assert st.disk_loads >= len(set(trace))  # every adapter comes from disk at least once
    # under LRU each tier is an LRU cache of its own size (the inclusion never evicts more)
    st = simulate_two_tier(trace, 8, 64, "lru")
    assert st.gpu_hits == simulate_cache(trace, 8, "lru").hits
    assert st.disk_loads == simulate_cache(trace, 64, "lru").misses
    big = simulate_two_tier(trace, 8, 300, "fifo")
    assert big.disk_loads == len(set(trace))


def invariants(trace, batches, max_batch, max_loras, gap):
    served = sorted(i for b in batches for i in b.requests)
    assert served == list(range(len(trace)))  # every request exactly once
    for b in batches:
        assert 1 <= len(b.requests) <= max_batch
        assert len({trace[i] for i in b.requests}) <= max_loras
        assert all(b.start_s >= i * gap - 1e-12 for i in b.requests)  # never before it arrives
    assert all(x.start_s < y.start_s for x, y in zip(batches, batches[1:]))


@pytest.mark.parametrize("scheduler", ["fcfs", "grouped"])
@pytest.mark.parametrize("max_batch, max_loras", [(16, 4), (32, 8), (3, 1)])
def test_scheduler_limits_and_every_request_once(scheduler, max_batch, max_loras):
    trace = zipf_trace(3000, 200, s=1.1, seed=0)
    for gap in (0.004, 0.05):  # overloaded, and often idle
        batches = schedule_batches(trace, scheduler, max_batch, max_loras, gap, 0.025, 0.005)
        invariants(trace, batches, max_batch, max_loras, gap)


def test_fcfs_and_grouped_by_hand():
    # all four arrive at once; 2 adapters per batch at most
    fcfs = schedule_batches([0, 1, 2, 0], "fcfs", 8, 2, 0.0, 1.0, 0.5)
    assert [b.requests for b in fcfs] == [(0, 1), (2, 3)]  # 2 would be a third adapter: the batch closes
    assert [b.start_s for b in fcfs] == [0.0, 2.0]  # 1 + 2 * 0.5
    grouped = schedule_batches([0, 1, 2, 0], "grouped", 8, 2, 0.0, 1.0, 0.5)
    assert [b.requests for b in grouped] == [(0, 3, 1), (2,)]  # adapter 0 has most waiting; 1 ties 2, is older
    st = simulate_scheduler([0, 1, 2, 0], "grouped", 8, 2, 0.0, 1.0, 0.5)
    assert (st.batches, st.mean_rows_per_batch, st.mean_wait_s, st.makespan_s) == (2, 2.0, 0.5, 3.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_loras", [4, 8])
def test_grouping_fills_batches(seed, max_loras):
    trace = zipf_trace(4000, 1000, s=1.1, seed=seed)
    fcfs = simulate_scheduler(trace, "fcfs", 32, max_loras, **COSTS)
    grouped = simulate_scheduler(trace, "grouped", 32, max_loras, **COSTS)
    assert grouped.mean_rows_per_adapter > fcfs.mean_rows_per_adapter
    assert grouped.mean_rows_per_batch > fcfs.mean_rows_per_batch
    assert grouped.p95_wait_s < fcfs.p95_wait_s
    assert fcfs.mean_adapters_per_batch <= max_loras


def test_starvation_guard():
    # one adapter-0 row arrives per 0.25 s, one batch (1 adapter, 2 rows) per 0.5 s: adapter 0 always has 2
    # waiting, more than the lone request 10 for adapter 9, which grouping alone serves only at the very end
    trace = [0] * 10 + [9] + [0] * 300
    rare = 10

    def waited(max_wait_batches):
        batches = schedule_batches(trace, "grouped", 2, 1, 0.25, 0.5, 0.0, max_wait_batches)
        invariants(trace, batches, 2, 1, 0.25)
        first_seen = next(k for k, b in enumerate(batches) if b.start_s >= rare * 0.25)
        return next(k for k, b in enumerate(batches) if rare in b.requests) - first_seen

    assert waited(3) == 3
    assert waited(10**6) > 100


@pytest.mark.parametrize("call, error, match", [
    (lambda: simulate_cache([0, 1], 0, "lru"), ValueError, "slots must be an integer >= 1"),
    (lambda: simulate_cache([0, 1], "8", "lru"), TypeError, "slots must be an integer"),
    (lambda: simulate_cache([0, 1], 2, "lfu"), ValueError, r"policy must be one of \('lru', 'fifo'\)"),
    (lambda: simulate_cache([], 2, "lru"), ValueError, "non-empty list of adapter ids.*zipf_trace"),
    (lambda: simulate_cache(7, 2, "lru"), TypeError, "non-empty list of adapter ids"),
    (lambda: simulate_cache([0, -1], 2, "lru"), ValueError, "adapter id in trace must be an integer >= 0"),
    (lambda: simulate_two_tier([0], 8, 4, "lru"), ValueError, "max_cpu_loras >= max_loras"),
    (lambda: zipf_trace(10, 5, s=-0.5), ValueError, "s must be a number >= 0.*s=0 for a uniform"),
    (lambda: zipf_trace(0, 5), ValueError, "n_requests must be an integer >= 1"),
    (lambda: zipf_trace(10, 5, seed=1.5), TypeError, "seed must be an integer"),
    (lambda: simulate_scheduler([0], "sjf", 8, 2, **COSTS), ValueError, r"one of \('fcfs', 'grouped'\)"),
    (lambda: simulate_scheduler([0], "fcfs", 8, 0, **COSTS), ValueError, "max_loras must be an integer >= 1"),
    (lambda: schedule_batches([0], "fcfs", 8, 2, 0.01, 0.0, 0.0), ValueError, "batch_cost_s must be a number > 0"),
])
def test_bad_input_says_what_to_do(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_measure_load_seconds():
    try:
        t = measure_load_seconds(n_adapters=2, repeats=2)
    except AssetsMissing as err:
        pytest.skip(str(err))
    weights = 30 * 8 * ((576 + 576) + (576 + 192)) * 4  # 30 layers, r=8, q_proj 576->576, v_proj 576->192, fp32
    assert weights < t.file_bytes < weights + 50_000  # plus the safetensors header
    for seconds in (t.disk_to_host_s, t.load_adapter_s):
        assert 0 < seconds < 10 and math.isfinite(seconds)
