"""The sweep behind chapter 09: rank and alpha, targets at an equal budget, and the LoRA variants.

    .venv/bin/python tools/sweep_ch09.py            # everything: about an hour on 2 cores
    .venv/bin/python tools/sweep_ch09.py --only "q,v r=64 α=128"

Every configuration is trained with chapter 05's protocol (``minilora.course.experiments.train_sentiment``:
MiniLM, sentiment, 100 AdamW steps, the learning rate decaying linearly) for three seeds at each of its
learning rates. The rates come from the ladder 1e-4, 2e-4, 5e-4, 1e-3, ... : three rates around a
first guess, and one more rate further out each time the best one is at an end of what was tried,
until it is not (so no configuration is judged at a rate that was too small or too large for it).
The rate with the best mean validation accuracy is chosen; only the models trained at it are then
evaluated on the test split, once.

The configurations that are chapter 05's (LoRA on query and value, alpha = 2r, r = 1, 4, 8, 16) are
not trained again: their rows are copied from ``results/ch05_sweep.csv``. Their chosen runs are
retrained to record the loss curves, and the validation accuracies must agree with the copied ones.

Writes ``results/ch09_sweep.csv`` (a row per run; ``test_accuracy`` only for the chosen rate) and
``results/ch09_losses.csv`` (the training loss of every step of the chosen runs). The first line of
each names the command that wrote it.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import statistics
import sys
import time

from minilora.config import LoRAConfig, lora_scaling
from minilora.course.experiments import accuracy, train_sentiment

if __package__:  # python -m tools.sweep_ch09, or imported as tools.sweep_ch09
    from .results_csv import read_results, write_results
else:  # python tools/sweep_ch09.py: Python puts tools/ first on sys.path
    from results_csv import read_results, write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "ch09_sweep.csv"
LOSSES = ROOT / "results" / "ch09_losses.csv"
CH05 = ROOT / "results" / "ch05_sweep.csv"
FIELDS = ["configuration", "targets", "r", "lora_alpha", "use_rslora", "variant", "scaling", "loraplus_lr_ratio",
          "head_lr", "trainable", "lr", "seed", "validation_accuracy", "test_accuracy", "chosen", "source"]
LADDER = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1, 2e-1]
TARGETS = {"q": ["query"], "v": ["value"], "q,v": ["query", "value"],
           "q,k,v,o": ["query", "key", "value", "attention.output.dense"], "all-linear": "all-linear"}
LORAPLUS_RATIO = 16  # LoRA+ paper, section 4: 2^4
LORAPLUS_RATIOS = (2, 4, 8, 16)  # tuned on validation, with the head in its own group
HEAD_LR = 5e-3  # the rate chosen for plain LoRA (q,v r=8 alpha=16), whose head trains at it


def name(targets: str, r: int, alpha: int, variant: str = "") -> str:
    return f"{targets} r={r} α={alpha}" + (f" {variant}" if variant else "")


def configurations() -> dict[str, dict]:
    """name -> the run's settings; a setting shared by two experiments is one configuration."""
    out = {}

    def add(targets, r, alpha, variant="", ratio=None, head_lr=None):
        rs = variant == "rsLoRA"
        s = lora_scaling(r, alpha, rs)
        # First guess: Adam moves each entry of B by about lr, so the update of W grows like
        # lr * s * sqrt(r); chapter 05's best (r = 8, s = 2, lr = 5e-3) fixes the constant.
        guess = 5e-3 * 2 * math.sqrt(8) / (s * math.sqrt(r))
        if ratio:
            guess /= math.sqrt(ratio)  # the B matrices get lr * ratio
        key = name(targets, r, alpha, variant)
        if head_lr:  # LoRA+ with the ratio tuned and the head in its own group
            key += f" λ={ratio} head {head_lr:g}"
        out[key] = dict(targets=targets, r=r, lora_alpha=alpha, variant=variant, use_rslora=rs, scaling=s,
                        guess=guess, ratio=ratio, head_lr=head_lr)

    for r in (1, 2, 4, 8, 16, 64):
        add("q,v", r, 2 * r)  # alpha = 2r: s = 2 at every rank
        add("q,v", r, 16)  # alpha fixed: s = 16 / r
        if r > 1:  # at r = 1, rsLoRA is alpha fixed
            add("q,v", r, 16, "rsLoRA")  # s = 16 / sqrt(r)
    for targets, r in (("q", 8), ("v", 8), ("q,k,v,o", 2), ("all-linear", 1)):  # (q,v) r=4 is above
        add(targets, r, 2 * r)
    for variant in ("DoRA", "PiSSA"):
        add("q,v", 8, 16, variant)
    add("q,v", 8, 16, "LoRA+", LORAPLUS_RATIO)  # PEFT's groups: the head's weight at lr, its bias at lr * 16
    for ratio in LORAPLUS_RATIOS:
        add("q,v", 8, 16, "LoRA+", ratio, HEAD_LR)
    return out


def lora_config(c: dict) -> LoRAConfig:
    return LoRAConfig(r=c["r"], lora_alpha=c["lora_alpha"], target_modules=TARGETS[c["targets"]],
                      modules_to_save=["classifier"], use_rslora=c["use_rslora"], use_dora=c["variant"] == "DoRA",
                      init_lora_weights="pissa" if c["variant"] == "PiSSA" else True)


def chapter05_rows() -> dict[str, list[dict]]:
    """Chapter 05's LoRA runs (query and value, alpha = 2r), under this file's names."""
    out = {}
    for row in read_results(CH05):
        if not row["configuration"].startswith("LoRA r=") or "all" in row["configuration"]:
            continue
        r = int(row["configuration"].removeprefix("LoRA r="))
        out.setdefault(name("q,v", r, 2 * r), []).append(row)
    return out


def train(c: dict, lr: float, seed: int):
    return train_sentiment(lora_config(c), lr, seed, progress=False, loraplus_lr_ratio=c["ratio"],
                           head_lr=c["head_lr"])


def row(key: str, c: dict, trainable: int, lr: float, seed: int, val: float, source: str) -> dict:
    return dict(configuration=key, targets=c["targets"], r=c["r"], lora_alpha=c["lora_alpha"],
                use_rslora=int(c["use_rslora"]), variant=c["variant"] or "LoRA", scaling=f"{c['scaling']:.4g}",
                loraplus_lr_ratio=c["ratio"] or "", head_lr=f"{c['head_lr']:g}" if c["head_lr"] else "",
                trainable=trainable, lr=f"{lr:g}", seed=seed, validation_accuracy=f"{val:.4f}", test_accuracy="",
                chosen=0, source=source)


def best_rate(rows: list[dict]) -> float:
    rates = sorted({float(r["lr"]) for r in rows})
    mean = {lr: statistics.mean(float(r["validation_accuracy"]) for r in rows if float(r["lr"]) == lr)
            for lr in rates}
    return max(rates, key=lambda lr: (mean[lr], -lr))  # ties: the smaller rate


def sweep(key: str, c: dict, seeds: list[int], copied: list[dict] | None) -> tuple[list[dict], list[dict]]:
    rows, runs = [], {}
    if copied:  # chapter 05's rows; retrain the chosen runs for their loss curves
        rows = [row(key, c, int(r["trainable"]), float(r["value"]), int(r["seed"]), float(r["validation_accuracy"]),
                    "ch05") for r in copied]
        best = best_rate(rows)
        for seed in seeds:
            run = train(c, best, seed)
            val = accuracy(run.model, run.tokenizer, "validation")
            old = next(float(r["validation_accuracy"]) for r in rows if float(r["lr"]) == best and r["seed"] == seed)
            if abs(val - old) > 0.02:
                raise SystemExit(f"{key} seed {seed}: validation {val:.4f} here, {old:.4f} in {CH05.name}: "
                                 "re-run tools/sweep_ch05.py on this machine first.")
            runs[best, seed] = run
    else:
        i = min(range(len(LADDER)), key=lambda i: abs(math.log(LADDER[i] / c["guess"])))
        tried = LADDER[max(i - 1, 0):i + 2]
        todo = list(tried)
        while todo:
            for lr in todo:
                for seed in seeds:
                    t = time.perf_counter()
                    run = train(c, lr, seed)
                    val = accuracy(run.model, run.tokenizer, "validation")
                    rows.append(row(key, c, run.trainable, lr, seed, val, "this sweep"))
                    runs[lr, seed] = run
                    print(f"  {key:<26} lr {lr:<7g} seed {seed}: validation {val:.1%} "
                          f"({time.perf_counter() - t:.0f} s)", flush=True)
            best = best_rate(rows)
            todo = []
            if best == tried[0] and LADDER.index(best) > 0:
                todo = [LADDER[LADDER.index(best) - 1]]
            elif best == tried[-1] and LADDER.index(best) < len(LADDER) - 1:
                todo = [LADDER[LADDER.index(best) + 1]]
            tried = sorted(tried + todo)
        for (lr, _), run in list(runs.items()):  # free the models that will not be tested
            if lr != best:
                del runs[lr, _]
    losses = []
    for r in rows:
        if float(r["lr"]) == best:  # only these models see the test split, once each
            run = runs[best, int(r["seed"])]
            r["test_accuracy"] = f"{accuracy(run.model, run.tokenizer, 'test'):.4f}"
            r["chosen"] = 1
            losses += [dict(configuration=key, seed=r["seed"], step=step + 1, loss=f"{loss:.5f}")
                       for step, loss in enumerate(run.history.train_loss)]
    return rows, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per learning rate (>= 3)")
    ap.add_argument("--only", nargs="+", help="configurations to (re)run; the other rows are kept from the file")
    args = ap.parse_args()
    if len(set(args.seeds)) < 3:
        raise SystemExit("give at least three different seeds: the results report mean ± std.")
    configs, copied = configurations(), chapter05_rows()
    unknown = set(args.only or []) - set(configs)
    if unknown:
        raise SystemExit(f"unknown configurations {sorted(unknown)}; they are: {', '.join(configs)}")
    old_rows, old_losses = [], []
    if args.only:
        old_rows = [{**{f: "" for f in FIELDS}, **r} for r in read_results(OUT) if r["configuration"] not in args.only]
        for r in old_rows:  # files written before the LoRA+ columns existed
            if r["variant"] == "LoRA+" and not r["loraplus_lr_ratio"]:
                r["loraplus_lr_ratio"] = str(LORAPLUS_RATIO)
        old_losses = [r for r in read_results(LOSSES) if r["configuration"] not in args.only]
    t0 = time.perf_counter()
    rows, losses, order = old_rows, old_losses, list(configs)
    command = "python tools/sweep_ch09.py --seeds " + " ".join(map(str, args.seeds))
    for key, c in configs.items():
        if args.only and key not in args.only:
            continue
        print(key, flush=True)
        new_rows, new_losses = sweep(key, c, args.seeds, copied.get(key))
        rows = sorted(rows + new_rows, key=lambda r: order.index(r["configuration"]))
        losses = sorted(losses + new_losses, key=lambda r: order.index(r["configuration"]))
        # after every configuration, so that an interrupted sweep can go on with --only
        write_results(OUT, command, FIELDS, rows)
        write_results(LOSSES, command, ["configuration", "seed", "step", "loss"], losses)
    print(f"wrote {OUT} ({len(rows)} rows) and {LOSSES} in {(time.perf_counter() - t0) / 60:.0f} min",
          file=sys.stderr)


if __name__ == "__main__":
    main()
