"""Chapter 13's measurements: what serving several adapters at once costs on this CPU.

On SmolLM2-135M-Instruct (fp32), with adapters of r=8, lora_alpha=16 on q_proj and v_proj (the course's
default; B drawn N(0, 0.02) as after training), six configurations:

* ``base``: the model without LoRA; ``merged``: one adapter merged in (``merge_and_unload``);
* ``unmerged``: one adapter, unmerged (the usual forward); ``loop``, ``bgmv``, ``sgmv``: a mixed batch whose
  rows use the adapters in turn (``minilora.mixed_batch(model, names, kernel=...)``). The stacked factors of
  BGMV and SGMV are built once and the plan reused (``mixed_batch(model, plan)``), as a server keeps them
  between batches, so the times are those of the forward passes alone.

Measured at two scopes:

* **one layer**, SmolLM2's q_proj (576 -> 576) and v_proj (576 -> 192) shapes, at decode (batch 8 and 32, one
  token per row) and prefill (batch 8 x 128 tokens), 4 adapters; and at decode batch 32 with 1 to 32
  distinct adapters; with the bytes each call allocates (``minilora.course.timing.allocated_bytes``);
* **the whole model**: one decode step (batch 8 and 32, one new token after a 64-token prompt, the KV cache
  copied fresh for each call, outside the timing) and a prefill forward (batch 8 x 128), 4 adapters.

Every configuration of a measurement runs once per round, the order rotated each round
(``minilora.course.timing.interleaved``); the CSV holds the median time and the median per-round ratio to
``base`` with its 25th-75th percentile. Times belong to the machine that wrote them (its CPU capability and
thread count are in every row). About 6 minutes on a 2-core CPU.

Run: ``python -m tools.measure_ch13`` (writes ``results/ch13_timings.csv``).
"""
from __future__ import annotations

import argparse
import copy
import pathlib

import torch

import minilora
from minilora.config import LoRAConfig
from minilora.course.models import load_chat_model
from minilora.course.timing import allocated_bytes, interleaved
from minilora.serving import KERNELS, mixed_batch
from tools.results_csv import write_results

OUT = pathlib.Path(__file__).resolve().parent.parent / "results" / "ch13_timings.csv"
FIELDS = ["scope", "phase", "batch", "tokens_per_row", "n_adapters", "config", "median_s", "ratio_to_base",
          "ratio_q1", "ratio_q3", "rounds", "allocated_bytes", "stacked_bytes", "cpu", "threads"]
CONFIGS = ("base", "merged", "unmerged") + KERNELS


def names_for(batch: int, n_adapters: int) -> list[str]:
    """Row i uses adapter i mod n_adapters: every adapter present, the rows spread evenly."""
    return [f"a{i % n_adapters}" for i in range(batch)]


def with_adapters(base: torch.nn.Module, n: int, targets: list[str]) -> torch.nn.Module:
    """A copy of ``base`` holding adapters a0 .. a{n-1}, B non-zero, in eval mode."""
    model = copy.deepcopy(base)
    for i in range(n):
        minilora.add_adapter(model, f"a{i}", LoRAConfig(r=8, lora_alpha=16, target_modules=targets))
    torch.manual_seed(1)
    with torch.no_grad():
        for _, layer in minilora.lora_layers(model):
            for name in layer.adapters:
                layer.factors(name)[1].normal_(0, 0.02)
    minilora.set_adapter(model, "a0")
    return model.eval()


def candidates(base, model, call, names) -> tuple[dict, dict]:
    """The six configurations as functions running ``call(m)`` without gradients, and the bytes of the
    stacked factors each kernel holds."""
    merged = minilora.merge_and_unload(copy.deepcopy(model), adapter_names=["a0"])
    fns = {"base": lambda: call(base), "merged": lambda: call(merged), "unmerged": lambda: call(model)}
    stacked = dict.fromkeys(CONFIGS, 0)
    for kernel in KERNELS:
        with mixed_batch(model, names, kernel=kernel) as plan:  # built once, reused by every call: a server
            stacked[kernel] = sum(t.nbytes for pair in plan.stacks.values() for t in pair)  # keeps its stacks

        def run(plan=plan):
            with mixed_batch(model, plan):
                return call(model)
        fns[kernel] = run
    return fns, stacked


def measure(fns, stacked, rounds, calls, common, count_bytes=False) -> list[dict]:
    with torch.no_grad():
        timings = interleaved(fns, rounds, reference="base", warmup=1, calls=calls)
        rows = []
        for name, t in timings.items():
            q1, q3 = t.ratio_iqr
            rows.append({**common, "config": name, "median_s": f"{t.median_s:.6g}", "ratio_to_base": f"{t.ratio:.4f}",
                         "ratio_q1": f"{q1:.4f}", "ratio_q3": f"{q3:.4f}", "rounds": rounds,
                         "allocated_bytes": allocated_bytes(fns[name]) if count_bytes else "",
                         "stacked_bytes": stacked[name]})
    return rows


def layer_rows(quick: bool, machine: dict) -> list[dict]:
    rows = []
    for proj, d_out in (("q_proj", 576), ("v_proj", 192)):
        torch.manual_seed(0)
        base = torch.nn.Sequential(torch.nn.Linear(576, d_out)).requires_grad_(False).eval()
        settings = [("decode", 8, 1, 4), ("decode", 32, 1, 4), ("prefill", 8, 128, 4)]
        if proj == "q_proj":
            settings += [("decode", 32, 1, n) for n in (1, 2, 8, 16, 32)]
        for phase, batch, tokens, n in settings:
            model = with_adapters(base, n, ["0"])
            x = torch.randn(batch, tokens, 576)
            fns, stacked = candidates(base, model, lambda m, x=x: m(x), names_for(batch, n))
            rounds, calls = (3, 2) if quick else ((40, 20) if phase == "decode" else (20, 3))
            common = {"scope": f"layer {proj} 576x{d_out}", "phase": phase, "batch": batch, "tokens_per_row": tokens,
                      "n_adapters": n, **machine}
            rows += measure(fns, stacked, rounds, calls, common, count_bytes=True)
            print(f"  {proj} {phase} {batch}x{tokens}, {n} adapters: done", flush=True)
    return rows


def model_rows(quick: bool, machine: dict) -> list[dict]:
    base, _ = load_chat_model()
    base.eval()
    model = with_adapters(base, 4, ["q_proj", "v_proj"])
    rows, g = [], torch.Generator().manual_seed(0)
    for batch in (8, 32):
        prompt = torch.randint(100, 40000, (batch, 64), generator=g)
        with torch.no_grad():
            cache = base(input_ids=prompt, use_cache=True).past_key_values
        step = torch.randint(100, 40000, (batch, 1), generator=g)

        def call(m, step=step, cache=cache):
            fresh = copy.deepcopy(cache)  # (a deep copy costs the same for every configuration)
            return m(input_ids=step, past_key_values=fresh, use_cache=True)

        fns, stacked = candidates(base, model, call, names_for(batch, 4))
        common = {"scope": "model SmolLM2-135M", "phase": "decode", "batch": batch, "tokens_per_row": 1,
                  "n_adapters": 4, **machine}
        rows += measure(fns, stacked, 3 if quick else 15, 1 if quick else 3, common)
        print(f"  model decode batch {batch}: done", flush=True)
    ids = torch.randint(100, 40000, (8, 128), generator=g)
    fns, stacked = candidates(base, model, lambda m: m(input_ids=ids), names_for(8, 4))
    common = {"scope": "model SmolLM2-135M", "phase": "prefill", "batch": 8, "tokens_per_row": 128,
              "n_adapters": 4, **machine}
    rows += measure(fns, stacked, 2 if quick else 8, 1, common)
    print("  model prefill 8x128: done", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: few rounds, the CSV not written")
    args = ap.parse_args(argv)
    machine = {"cpu": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    rows = layer_rows(args.quick, machine) + model_rows(args.quick, machine)
    if not args.quick:
        write_results(OUT, "python -m tools.measure_ch13", FIELDS, rows)
        print(f"wrote {len(rows)} rows to {OUT.relative_to(OUT.parent.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
