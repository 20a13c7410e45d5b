"""Chapter 15's RL: group-relative REINFORCE with LoRA at rank 1 against rank 8.

    .venv/bin/python -m tools.sweep_ch15_rl         # about 50 minutes on 1 core, 80 beside another sweep
    .venv/bin/python -m tools.sweep_ch15_rl --only full --out FILE   # full fine-tuning, not in the file yet

Every run starts from chapter 07's instruction-tuned SmolLM2 and trains on ISO dates with an exact-match reward
(``minilora.course.rl_runs``: ``PROMPTS`` prompts and ``GROUP`` samples per step, ``STEPS`` steps) with all-linear
LoRA at r = 1 and r = 8 (lora_alpha = 2r). Full fine-tuning (every one of the 135M weights, with AdamW's state for
each) is a setup too, run only when asked for: the committed file has LoRA alone. Each step's row has the mean
reward of its samples and the share of groups that taught something; every ``EVERY`` steps the greedy accuracy on
``large_validation`` (40 dates) is added.

For each setup the learning rate is chosen on seed 0's last validation accuracy (ties: the higher mean reward of
the last ``EVERY`` steps, then the smaller rate) from a ladder: three rates to start, extended by one at a time
while the best is at an end of what was tried (``tools/ladder.py``). Seeds 1 and 2 then train at the chosen rate,
and the three seeds are scored once on ``large_test`` (40 dates).

``results/ch15_rl.csv``: one row per run and step (``split`` train; ``val_accuracy`` at every ``EVERY``-th step),
the chosen runs' test accuracy (``split`` test, at the last step), and the start model's accuracies (setup
``start``, step 0). ``--only SETUP ... --out FILE`` runs some setups; ``--combine FILE ...`` writes the results
file from such files (the start rows of the first, each setup's rows from the file that has them).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

import minilora
from minilora import LoRAConfig
from minilora.course import rl_runs
from minilora.course.chat_runs import instruction_tuned

if __package__:  # python -m tools.sweep_ch15_rl
    from .ladder import choose_rate
    from .results_csv import read_results, write_results
else:  # python tools/sweep_ch15_rl.py
    from ladder import choose_rate
    from results_csv import read_results, write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "ch15_rl.csv"
COMMAND = "python -m tools.sweep_ch15_rl"
STEPS, EVERY = 24, 8
SETUPS = {**{f"LoRA r={r}": LoRAConfig(r=r, lora_alpha=2 * r, target_modules="all-linear") for r in (1, 8)},
          "full": "full"}
LADDER = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2]
DEFAULT = ["LoRA r=1", "LoRA r=8"]
START = {"LoRA r=1": [5e-4, 1e-3, 2e-3], "LoRA r=8": [5e-4, 1e-3, 2e-3], "full": [2e-5, 5e-5, 1e-4]}
SEEDS = [0, 1, 2]
FIELDS = ["setup", "trainable", "lr", "seed", "step", "reward", "informative", "split", "val_accuracy",
          "test_accuracy", "chosen"]


def validation(model, tok) -> dict:
    return {"val_accuracy": f"{rl_runs.accuracy(model, tok, 'large_validation'):.1f}"}


def run(name: str, lr: float, seed: int, log) -> tuple[list[dict], tuple]:
    """One run's rows and (model, tokenizer)."""
    model, tok, steps = rl_runs.train(SETUPS[name], lr, seed, STEPS, evaluate=validation, every=EVERY)
    trainable = minilora.get_nb_trainable_parameters(model)[0]
    rows = [{"setup": name, "trainable": trainable, "lr": f"{lr:g}", "seed": seed, **s,
             "reward": f"{s['reward']:.4f}", "informative": f"{s['informative']:.3f}", "split": "train",
             "val_accuracy": s.get("val_accuracy", ""), "test_accuracy": "", "chosen": 0} for s in steps]
    tail = sum(s["reward"] for s in steps[-EVERY:]) / EVERY
    log(f"{name:<9} lr {lr:<7g} seed {seed}: reward (last {EVERY}) {tail:.3f} validation "
        + " ".join(r["val_accuracy"] for r in rows if r["val_accuracy"]))
    return rows, (model, tok)


def sweep(name: str, log) -> list[dict]:
    """Choose the rate on seed 0's last validation accuracy, train seeds 1 and 2 there, score the three on test."""
    rows, runs = [], {}

    def score(lr: float) -> tuple:
        r, trained = run(name, lr, 0, log)
        rows.extend(r)
        runs[lr] = [r, trained]
        key = lambda x: (*result(runs[x][0]), -x)  # noqa: E731
        for other in [x for x in runs if x != max(runs, key=key)]:
            runs[other][1] = None  # keep only the best model so far (memory)
        return result(r)

    best, _ = choose_rate(score, START[name], LADDER, extensions=2)
    for row in rows:
        row["chosen"] = int(float(row["lr"]) == best)
    for seed in SEEDS:  # only the chosen rate sees the test split
        r, (model, tok) = runs.pop(best) if seed == 0 else run(name, best, seed, log)
        if seed:
            rows += [{**row, "chosen": 1} for row in r]
        rows.append({**r[-1], "split": "test", "reward": "", "informative": "", "val_accuracy": "", "chosen": 1,
                     "test_accuracy": f"{rl_runs.accuracy(model, tok, 'large_test'):.1f}"})
        log(f"{name:<9} lr {best:<7g} seed {seed} test {rows[-1]['test_accuracy']}")
    return rows


def result(rows: list[dict]) -> tuple[float, float]:
    """(the last validation accuracy, the mean reward of the last EVERY steps)."""
    return float(rows[-1]["val_accuracy"]), sum(float(r["reward"]) for r in rows[-EVERY:]) / EVERY


def start_rows() -> list[dict]:
    model, tok = instruction_tuned()
    return [{"setup": "start", "trainable": 0, "lr": "", "seed": "", "step": 0, "reward": "", "informative": "",
             "split": split, "val_accuracy": acc if split == "validation" else "",
             "test_accuracy": acc if split == "test" else "", "chosen": ""}
            for split, acc in (("validation", f"{rl_runs.accuracy(model, tok, 'large_validation'):.1f}"),
                               ("test", f"{rl_runs.accuracy(model, tok, 'large_test'):.1f}"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SETUPS), help="run these setups only")
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    parser.add_argument("--combine", nargs="+", type=pathlib.Path, metavar="FILE",
                        help="write the results file from files that --only ... --out FILE wrote")
    args = parser.parse_args()
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {msg}", flush=True)

    if args.combine:
        parts = [read_results(f) for f in args.combine]
        out = [r for r in parts[0] if r["setup"] == "start"]
        for name in SETUPS:
            out += next(([r for r in rows if r["setup"] == name] for rows in parts
                         if any(r["setup"] == name for r in rows)), [])
        write_results(args.out, COMMAND, FIELDS, out)
        log(f"wrote {args.out}: {len(out)} rows ({', '.join(dict.fromkeys(r['setup'] for r in out))})")
        return 0

    torch.set_num_threads(1)  # beside the preference sweep's two workers, or alone on a small machine
    out = start_rows()
    for name in args.only or DEFAULT:
        out += sweep(name, log)
        write_results(args.out, COMMAND, FIELDS, out)  # after every setup: a partial file
    log(f"wrote {args.out}: {len(out)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
