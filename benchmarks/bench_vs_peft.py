"""minilora against Hugging Face PEFT, side by side, on the same model, config and batch.

Measures, on the course's two real models (CPU, fp32):

* **training step** (forward + backward + AdamW step + zero_grad), minilora vs PEFT:
  - all-MiniLM-L6-v2, sequence classification, LoRA r=8 on query,value (+ classifier in
    modules_to_save), batch 32 x 64 tokens;
  - SmolLM2-135M-Instruct, causal-LM loss, LoRA r=8 on q_proj,v_proj, batch 4 x 128 tokens;
* **merged inference** (forward, no grad): the model after minilora's ``merge_and_unload``
  against the plain base model, same batches;
* **mixed-adapter inference** (chapter 13): SmolLM2 holding four adapters (r=8 on q_proj,v_proj), a
  batch of 8 x 64 tokens whose rows use the four adapters in turn: ``with minilora.mixed_batch(model,
  names):`` against PEFT's ``model(**batch, adapter_names=names)``, PEFT reading minilora's files.

Both sides start from identical weights (PEFT's A and B are copied from minilora's, B made
non-zero, and the outputs are checked equal) so that they do exactly the same arithmetic.

Method: the two sides are timed in interleaved pairs, A B / B A / A B ..., after a warm-up,
so that drifts in machine load hit both. Each pair gives a ratio; the table shows the median
ratio and its spread (25th-75th percentile), and the median times. Each section stops at its
repetition cap or its share of the time budget (``--budget`` seconds, default 150), whichever
comes first, but never below ``--min-reps`` pairs.

Goals: training step <= 1.05 x PEFT; merged inference <= 1.02 x base; mixed batch <= 1.05 x PEFT.

Run: ``make bench`` or ``.venv/bin/python benchmarks/bench_vs_peft.py [--budget S] [--quick]``.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from typing import Callable

import torch

import minilora
from minilora.config import LoRAConfig
from minilora.course.models import load_chat_model, load_encoder
from minilora.inject import inject_lora, lora_layers, merge_and_unload

GOAL_TRAIN, GOAL_MERGED, GOAL_MIXED = 1.05, 1.02, 1.05


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile)."""
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def interleaved(a: Callable[[], None], b: Callable[[], None], warmup: int, min_reps: int,
                max_reps: int, budget_s: float, clock: Callable[[], float] = time.perf_counter
                ) -> tuple[list[float], list[float]]:
    """Time ``a`` and ``b`` in alternating order (AB, BA, AB, ...) with ``clock``; return both
    lists of seconds. The budget is always counted in wall-clock seconds."""
    for _ in range(warmup):
        a()
        b()
    ta, tb, start = [], [], time.perf_counter()
    for i in range(max_reps):
        if i >= min_reps and time.perf_counter() - start > budget_s:
            break
        for fn, out in (((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta))):
            t0 = clock()
            fn()
            out.append(clock() - t0)
    return ta, tb


def train_step(model: torch.nn.Module, batch: dict) -> Callable[[], None]:
    """One forward + backward + AdamW step + zero_grad on ``batch`` (train mode)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step() -> None:
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def infer(model: torch.nn.Module, batch: dict) -> Callable[[], None]:
    """One forward pass without gradients (eval mode)."""
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def run() -> None:
        with torch.no_grad():
            model(**inputs)

    return run


def twin_models(base: torch.nn.Module, targets: list[str], save: list[str] | None, batch: dict):
    """minilora and PEFT versions of ``base`` with identical (non-zero) adapters; checked equal."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    mine = inject_lora(copy.deepcopy(base), LoRAConfig(r=8, lora_alpha=16, target_modules=targets,
                                                       modules_to_save=save))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                                target_modules=targets, modules_to_save=save))
    inner = theirs.base_model.model
    with torch.no_grad():
        for name, layer in lora_layers(mine):
            A, B = layer.factors("default")
            B.normal_(0, 0.02)  # as after some training, so that both paths do real work
            peft_layer = inner.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(A)
            peft_layer.lora_B["default"].weight.copy_(B)
    mine.eval(), theirs.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(mine(**inputs).logits, theirs(**inputs).logits, rtol=1e-4, atol=1e-4)
    return mine, theirs


def mixed_twins(base: torch.nn.Module, names: list[str], batch: dict):
    """minilora and PEFT versions of ``base`` holding the same adapters ``names`` (r=8 on q_proj, v_proj, B
    non-zero), PEFT reading the files minilora writes; their mixed-batch logits are checked equal."""
    from peft import PeftModel

    torch.manual_seed(0)
    mine = copy.deepcopy(base)
    for i, name in enumerate(names):
        minilora.add_adapter(mine, name, LoRAConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
        for _, layer in lora_layers(mine):
            layer.factors(name)[1].data.normal_(0, 0.02)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            minilora.save_adapter(mine, f"{tmp}/{name}", name)
        theirs = PeftModel.from_pretrained(copy.deepcopy(base), f"{tmp}/{names[0]}", adapter_name=names[0])
        for name in names[1:]:
            theirs.load_adapter(f"{tmp}/{name}", adapter_name=name)
    mine.eval(), theirs.eval()
    rows = [names[i % len(names)] for i in range(len(batch["input_ids"]))]
    with torch.no_grad(), minilora.mixed_batch(mine, rows):
        torch.testing.assert_close(mine(**batch).logits, theirs(**batch, adapter_names=rows).logits,
                                   rtol=1e-4, atol=1e-4)
    return mine, theirs, rows


def row(name: str, num: list[float], den: list[float], goal: float) -> dict:
    ratios = [x / y for x, y in zip(num, den)]
    q1, med, q3 = quantiles(ratios)
    return {"name": name, "a": statistics.median(num), "b": statistics.median(den), "ratio": med,
            "q1": q1, "q3": q3, "n": len(ratios), "goal": goal}


def print_table(rows: list[dict]) -> None:
    head = f"{'measurement':<56}{'A (s)':>9}{'B (s)':>9}{'A/B':>8}{'spread (IQR)':>17}{'pairs':>7}  goal"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        ok = "ok" if r["ratio"] <= r["goal"] else "MISSED"
        spread = f"{r['q1']:.3f}-{r['q3']:.3f}"
        print(f"{r['name']:<56}{r['a']:9.4f}{r['b']:9.4f}{r['ratio']:8.3f}{spread:>17}{r['n']:7d}  "
              f"<= {r['goal']:.2f} {ok}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=float, default=150.0,
                    help="seconds for all timed pairs (default 150; loading and warm-up come on top)")
    ap.add_argument("--min-reps", type=int, default=5, help="fewest timed pairs per measurement")
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny budget, 3 pairs")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process's CPU time instead of the wall clock: steadier on a "
                         "shared machine, best with OMP_NUM_THREADS=1 (spinning threads count too)")
    args = ap.parse_args(argv)
    if args.quick:
        args.budget, args.min_reps = 5.0, 3
    t_start = time.perf_counter()
    clock = time.process_time if args.cpu_time else time.perf_counter
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; budget {args.budget:.0f} s; "
          f"clock: {'process CPU time' if args.cpu_time else 'wall'}")
    g = torch.Generator().manual_seed(0)
    # Shares of the budget: (warm-up pairs, max pairs, share) per section; SmolLM2 steps are ~8x longer.
    plan = {"minilm_train": (3, 60, 0.19), "minilm_merged": (3, 100, 0.07),
            "smol_train": (1, 30, 0.45), "smol_merged": (1, 40, 0.15), "smol_mixed": (1, 40, 0.14)}
    rows = []

    enc, _ = load_encoder(num_labels=2)
    batch = {"input_ids": torch.randint(1000, 28000, (32, 64), generator=g),
             "attention_mask": torch.ones(32, 64, dtype=torch.long),
             "labels": torch.randint(0, 2, (32,), generator=g)}
    mine, theirs = twin_models(enc, ["query", "value"], ["classifier"], batch)
    w, n, share = plan["minilm_train"]
    ta, tb = interleaved(train_step(mine, batch), train_step(theirs, batch), w, args.min_reps, n,
                         share * args.budget, clock)
    rows.append(row("MiniLM train step 32x64 (minilora / PEFT)", ta, tb, GOAL_TRAIN))
    merged = merge_and_unload(mine)
    w, n, share = plan["minilm_merged"]
    ta, tb = interleaved(infer(merged, batch), infer(copy.deepcopy(enc), batch), w, args.min_reps, n,
                         share * args.budget, clock)
    rows.append(row("MiniLM inference 32x64 (merged / base)", ta, tb, GOAL_MERGED))
    del mine, theirs, merged, enc

    llm, _ = load_chat_model()
    ids = torch.randint(100, 40000, (4, 128), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    base_copy = copy.deepcopy(llm)
    mine, theirs = twin_models(llm, ["q_proj", "v_proj"], None, batch)
    w, n, share = plan["smol_train"]
    ta, tb = interleaved(train_step(mine, batch), train_step(theirs, batch), w, args.min_reps, n,
                         share * args.budget, clock)
    rows.append(row("SmolLM2 train step 4x128 (minilora / PEFT)", ta, tb, GOAL_TRAIN))
    del theirs
    merged = merge_and_unload(mine)
    del llm  # both sides are deep copies of the loaded model, so their weights live in the same kind of memory
    w, n, share = plan["smol_merged"]
    ta, tb = interleaved(infer(merged, batch), infer(base_copy, batch), w, args.min_reps, n,
                         share * args.budget, clock)
    rows.append(row("SmolLM2 inference 4x128 (merged / base)", ta, tb, GOAL_MERGED))
    del merged, mine

    ids = torch.randint(100, 40000, (8, 64), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    mine, theirs, names = mixed_twins(base_copy, ["a", "b", "c", "d"], batch)

    def ours() -> None:
        with torch.no_grad(), minilora.mixed_batch(mine, names):
            mine(**batch)

    def peft() -> None:
        with torch.no_grad():
            theirs(**batch, adapter_names=names)

    w, n, share = plan["smol_mixed"]
    ta, tb = interleaved(ours, peft, w, args.min_reps, n, share * args.budget, clock)
    rows.append(row("SmolLM2 mixed batch 8x64, 4 adapters (minilora / PEFT)", ta, tb, GOAL_MIXED))

    print_table(rows)
    print(f"\nA/B is the median of per-pair ratios; spread is their 25th-75th percentile. "
          f"Total {time.perf_counter() - t_start:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
