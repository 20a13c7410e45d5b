"""The simulations behind chapter 13's adapter cache and scheduler (``minilora.course.serving_sim``).

    .venv/bin/python -m tools.sweep_ch13            # about 30 s on one core
    .venv/bin/python -m tools.sweep_ch13 --seeds 0 1 2 3 4

For every seed, Zipf traces of ``--requests`` requests over N adapters (N in ``ADAPTERS``, exponent s in
``ZIPF_S``) are served by:

* **a cache** of each size in ``SLOTS``, evicting by LRU or FIFO (``simulate_cache``: one tier, every miss a
  load), and the same GPU slots inside a host cache of ``--cpu-slots`` adapters (``simulate_two_tier``: disk
  loads and host -> slot copies counted apart). Each row carries the real time to load one adapter on the
  machine that ran the sweep (``measure_load_seconds``: SmolLM2-135M, r=8 on q_proj and v_proj, measured once),
  so that ``load_s_per_1000 = loads_per_1000 * load_adapter_s`` is the seconds spent loading per 1000 requests;
* **a scheduler**, "fcfs" or "grouped", for each ``max_batch`` in ``MAX_BATCH`` and ``max_loras`` in
  ``MAX_LORAS``. A decode batch takes ``batch_cost_s + adapter_cost_s * adapters`` seconds, both measured by
  ``tools.measure_ch13`` on SmolLM2 (``results/ch13_timings.csv``, the whole model's decode step at batch 32:
  ``batch_cost_s`` is one unmerged adapter's step, ``adapter_cost_s`` a third of what the loop's step with 4
  adapters adds to it). Requests arrive evenly at each load in ``LOADS``: that many per ``batch_cost_s``.
  Where a scheduler serves fewer than that, its queue grows for the whole trace and its waits grow with the
  trace's length: compare ``throughput_rps`` with ``1 / arrival_gap_s``.

Rows go to ``results/ch13_cache.csv`` and ``results/ch13_scheduler.csv``, whose first line names the command.
The timing columns (``load_adapter_s``, ``disk_to_host_s``) are this machine's; everything else is exact.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time
from itertools import product

from minilora.course.models import AssetsMissing
from minilora.course.serving_sim import (
    measure_load_seconds,
    simulate_cache,
    simulate_scheduler,
    simulate_two_tier,
    zipf_trace,
)

if __package__:  # python -m tools.sweep_ch13, or imported as tools.sweep_ch13
    from .results_csv import read_results, write_results
else:  # python tools/sweep_ch13.py: Python puts tools/ first on sys.path
    from results_csv import read_results, write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT_CACHE = ROOT / "results" / "ch13_cache.csv"
OUT_SCHEDULER = ROOT / "results" / "ch13_scheduler.csv"
ADAPTERS = [100, 1000]
ZIPF_S = [0.8, 1.1]
SLOTS = [4, 8, 16, 32, 64]
POLICIES = ["lru", "fifo"]
MAX_BATCH = [16, 32]
MAX_LORAS = [4, 8]
SCHEDULERS = ["fcfs", "grouped"]
LOADS = [2, 8]  # requests arriving per batch_cost_s
TIMINGS = ROOT / "results" / "ch13_timings.csv"
DEFAULTS = dict(seeds=[0, 1, 2], requests=10_000, cpu_slots=256, max_wait_batches=8)
TRACE = ["n_adapters", "zipf_s", "n_requests", "seed"]
CACHE_FIELDS = TRACE + ["policy", "slots", "hits", "misses", "hit_rate", "loads_per_1000", "file_bytes",
                        "disk_to_host_s", "load_adapter_s", "load_s_per_1000", "cpu_slots", "two_tier_gpu_hit_rate",
                        "two_tier_disk_loads_per_1000", "two_tier_slot_copies_per_1000"]
SCHEDULER_FIELDS = TRACE + ["scheduler", "max_batch", "max_loras", "max_wait_batches", "load", "arrival_gap_s",
                            "batch_cost_s", "adapter_cost_s", "batches", "mean_rows_per_batch",
                            "mean_adapters_per_batch", "mean_rows_per_adapter", "mean_wait_s", "p95_wait_s",
                            "max_wait_s", "makespan_s", "throughput_rps"]


def g(x: float) -> str:
    return f"{x:.6g}"


def cache_rows(traces: dict, load, cpu_slots: int) -> list[dict]:
    rows = []
    for (n, s, seed), trace in traces.items():
        for policy in POLICIES:
            for slots in SLOTS:
                one, two = simulate_cache(trace, slots, policy), simulate_two_tier(trace, slots, cpu_slots, policy)
                rows.append(dict(
                    n_adapters=n, zipf_s=s, n_requests=len(trace), seed=seed, policy=policy, slots=slots,
                    hits=one.hits, misses=one.misses, hit_rate=g(one.hit_rate), loads_per_1000=g(one.loads_per_1000),
                    file_bytes=load.file_bytes, disk_to_host_s=g(load.disk_to_host_s),
                    load_adapter_s=g(load.load_adapter_s), load_s_per_1000=g(one.loads_per_1000 * load.load_adapter_s),
                    cpu_slots=cpu_slots, two_tier_gpu_hit_rate=g(two.gpu_hit_rate),
                    two_tier_disk_loads_per_1000=g(two.disk_loads_per_1000),
                    two_tier_slot_copies_per_1000=g(two.slot_copies_per_1000)))
    return rows


def measured_costs() -> tuple[float, float]:
    """(batch_cost_s, adapter_cost_s) from the whole model's decode step at batch 32 in ``TIMINGS``."""
    if not TIMINGS.exists():
        raise SystemExit(f"{TIMINGS.name} is missing: run python -m tools.measure_ch13 first (the scheduler's "
                         "batch costs are its measurements).")
    step = {r["config"]: float(r["median_s"]) for r in read_results(TIMINGS)
            if r["scope"].startswith("model") and r["phase"] == "decode" and r["batch"] == "32"}
    return step["unmerged"], (step["loop"] - step["unmerged"]) / 3


def scheduler_rows(traces: dict, args: argparse.Namespace, batch_cost_s: float, adapter_cost_s: float) -> list[dict]:
    rows = []
    for (n, s, seed), trace in traces.items():
        for load, max_batch, max_loras, name in product(LOADS, MAX_BATCH, MAX_LORAS, SCHEDULERS):
            gap = batch_cost_s / load
            st = simulate_scheduler(trace, name, max_batch, max_loras, gap, batch_cost_s, adapter_cost_s,
                                    args.max_wait_batches)
            rows.append(dict(
                n_adapters=n, zipf_s=s, n_requests=len(trace), seed=seed, scheduler=name, max_batch=max_batch,
                max_loras=max_loras, max_wait_batches=args.max_wait_batches, load=load,
                arrival_gap_s=g(gap), batch_cost_s=g(batch_cost_s),
                adapter_cost_s=g(adapter_cost_s), batches=st.batches,
                mean_rows_per_batch=g(st.mean_rows_per_batch),
                mean_adapters_per_batch=g(st.mean_adapters_per_batch),
                mean_rows_per_adapter=g(st.mean_rows_per_adapter), mean_wait_s=g(st.mean_wait_s),
                p95_wait_s=g(st.p95_wait_s), max_wait_s=g(st.max_wait_s), makespan_s=g(st.makespan_s),
                throughput_rps=g(st.requests / st.makespan_s)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=DEFAULTS["seeds"], help="trace seeds (>= 3)")
    ap.add_argument("--requests", type=int, default=DEFAULTS["requests"], help="requests per trace")
    ap.add_argument("--cpu-slots", type=int, default=DEFAULTS["cpu_slots"], help="host cache of the two-tier rows")
    ap.add_argument("--max-wait-batches", type=int, default=DEFAULTS["max_wait_batches"],
                    help="grouped: the starvation guard")
    args = ap.parse_args()
    if len(set(args.seeds)) < 3:
        raise SystemExit("give at least three different seeds: the results report mean ± std.")
    if args.cpu_slots < max(SLOTS):
        raise SystemExit(f"--cpu-slots must be >= {max(SLOTS)}, the largest GPU slot count: the host cache holds them.")
    t0 = time.perf_counter()
    changed = [f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
               for k, v in vars(args).items() if v != DEFAULTS[k]]
    command = " ".join(["python -m tools.sweep_ch13", *changed])
    try:
        load = measure_load_seconds()
    except AssetsMissing as err:
        raise SystemExit(f"{err}\nThe cache rows carry the real load time of a SmolLM2 adapter.") from None
    print(f"one adapter: {load.file_bytes} bytes, file -> host {load.disk_to_host_s * 1e3:.2f} ms, "
          f"load_adapter {load.load_adapter_s * 1e3:.1f} ms", file=sys.stderr)
    traces = {(n, s, seed): zipf_trace(args.requests, n, s, seed)
              for n in ADAPTERS for s in ZIPF_S for seed in args.seeds}
    rows = cache_rows(traces, load, args.cpu_slots)
    write_results(OUT_CACHE, command, CACHE_FIELDS, rows)
    print(f"wrote {OUT_CACHE}: {len(rows)} rows", file=sys.stderr)
    rows = scheduler_rows(traces, args, *measured_costs())
    write_results(OUT_SCHEDULER, command, SCHEDULER_FIELDS, rows)
    print(f"wrote {OUT_SCHEDULER}: {len(rows)} rows in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
