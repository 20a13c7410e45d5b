"""Chapter 14's loss curves: LoRA at ranks 1, 4, 16 and 64 against full fine-tuning, on log-steps.

    .venv/bin/python -m tools.sweep_ch14_curves        # about 105 minutes on 2 cores (two 1-thread workers)

*LoRA Without Regret*'s Fig. 1 in miniature. Every setup trains
SmolLM2-135M-Instruct with chapter 07's protocol (AdamW, batches of 8 length-grouped instructions, seeded) for
``STEPS`` steps on the larger ``large_train`` split, one pass: no batch is seen twice, so each step's training
loss is measured on examples the model has not yet trained on. After steps 1, 2, 4, ..., 64 the run records the
mean training loss of the steps since the last checkpoint and the mean NLL per answer token on
``large_validation`` (``minilora.course.chat_runs.curve``).

* LoRA on every linear layer (all-linear) at r = 1, 4, 16, 64, lora_alpha = 2r;
* full fine-tuning (every weight trains; the same AdamW).

For each setup the learning rate is chosen on seed 0's final **validation** loss (lowest wins; ties: the smaller
rate) from a ladder: three rates to start, extended by one rate at a time while the best is at an end of what
was tried (``tools/ladder.py``), so the chosen rate lies inside its grid. Seeds 1 and 2 then train at the chosen
rate, and the three seeds of the chosen rate are scored once on ``large_test`` after the last step.

Rows go to ``results/ch14_curves.csv``: one per run and checkpoint (``split`` validation), the chosen runs'
last rows again with ``test_loss`` (``split`` test), and the base model's losses (setup ``base``, step 0). The
setups are shared between two worker processes of one thread each (``WORKERS``: full fine-tuning and r=1 take
about 75 minutes, r=4, 16 and 64 about 105, each run 5 to 7 minutes); ``--only SETUP ... --out FILE`` runs some
setups in this process.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import torch

import minilora
from minilora import LoRAConfig
from minilora.course.chat_runs import answer_loss, curve
from minilora.course.models import load_chat_model

if __package__:  # python -m tools.sweep_ch14_curves
    from .ladder import choose_rate
    from .results_csv import read_results, write_results
else:  # python tools/sweep_ch14_curves.py
    from ladder import choose_rate
    from results_csv import read_results, write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "ch14_curves.csv"
COMMAND = "python -m tools.sweep_ch14_curves"
CHECKPOINTS = (1, 2, 4, 8, 16, 32, 64)
STEPS = CHECKPOINTS[-1]
SETUPS = {f"LoRA r={r} all-linear": LoRAConfig(r=r, lora_alpha=2 * r, target_modules="all-linear")
          for r in (1, 4, 16, 64)} | {"full": "full"}
LORA_LADDER = [2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2]
FULL_LADDER = [2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4]
START = {"LoRA r=1 all-linear": [2e-3, 5e-3, 1e-2], "LoRA r=4 all-linear": [1e-3, 2e-3, 5e-3],
         "LoRA r=16 all-linear": [5e-4, 1e-3, 2e-3], "LoRA r=64 all-linear": [5e-5, 1e-4, 2e-4],
         "full": [1e-5, 2e-5, 5e-5]}
SEEDS = [0, 1, 2]
WORKERS = [["full", "LoRA r=1 all-linear"], ["LoRA r=4 all-linear", "LoRA r=16 all-linear", "LoRA r=64 all-linear"]]
FIELDS = ["setup", "trainable", "lr", "seed", "step", "train_loss", "val_loss", "split", "test_loss", "chosen"]


def run(name: str, lr: float, seed: int, log) -> tuple[list[dict], tuple]:
    """One run's rows and (model, tokenizer)."""
    model, tok, checkpoints = curve(SETUPS[name], lr, seed, CHECKPOINTS)
    trainable = minilora.get_nb_trainable_parameters(model)[0]
    rows = [{"setup": name, "trainable": trainable, "lr": f"{lr:g}", "seed": seed, **c, "split": "validation",
             "test_loss": "", "chosen": 0} for c in checkpoints]
    log(f"{name:<22} lr {lr:<7g} seed {seed} " + " ".join(f"{c['step']}:{c['val_loss']}" for c in checkpoints))
    return rows, (model, tok)


def sweep(name: str, log) -> list[dict]:
    """Choose the rate on seed 0's final validation loss, train seeds 1 and 2 there, score the three on test."""
    rows, runs = [], {}

    def score(lr: float) -> tuple:
        r, trained = run(name, lr, 0, log)
        rows.extend(r)
        runs[lr] = (r, trained)
        best = min(runs, key=lambda x: (float(runs[x][0][-1]["val_loss"]), x))
        for other in [x for x in runs if x != best]:
            runs[other] = (runs[other][0], None)  # keep only the best model so far (memory)
        return (-float(r[-1]["val_loss"]),)

    best, _ = choose_rate(score, START[name], FULL_LADDER if name == "full" else LORA_LADDER, extensions=3)
    for row in rows:
        row["chosen"] = int(float(row["lr"]) == best)
    for seed in SEEDS:  # only the chosen rate sees the test split
        r, (model, tok) = runs.pop(best) if seed == 0 else run(name, best, seed, log)
        if seed:
            rows += [{**row, "chosen": 1} for row in r]
        rows.append({**r[-1], "split": "test", "val_loss": "", "train_loss": "", "chosen": 1,
                     "test_loss": f"{answer_loss(model, tok, 'large_test'):.4f}"})
        log(f"{name:<22} lr {best:<7g} seed {seed} test {rows[-1]['test_loss']}")
    return rows


def base_rows() -> list[dict]:
    model, tok = load_chat_model()
    return [{"setup": "base", "trainable": 0, "lr": "", "seed": "", "step": 0, "train_loss": "",
             "val_loss": f"{answer_loss(model, tok):.4f}", "split": "validation", "test_loss": "", "chosen": ""},
            {"setup": "base", "trainable": 0, "lr": "", "seed": "", "step": 0, "train_loss": "", "val_loss": "",
             "split": "test", "test_loss": f"{answer_loss(model, tok, 'large_test'):.4f}", "chosen": ""}]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SETUPS), help="run these setups in this process")
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {msg}", flush=True)

    if args.only:
        out = []
        for name in args.only:
            out += sweep(name, log)
            write_results(args.out, COMMAND, FIELDS, out)  # after every setup: a partial file
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    with tempfile.TemporaryDirectory() as tmp:
        parts = [pathlib.Path(tmp) / f"part{i}.csv" for i in range(len(WORKERS))]
        procs = [subprocess.Popen([sys.executable, "-m", "tools.sweep_ch14_curves", "--only", *names, "--out", str(p)],
                                  cwd=ROOT, env=env) for names, p in zip(WORKERS, parts)]
        torch.set_num_threads(1)  # beside the two workers
        out = base_rows()
        if any(p.wait() for p in procs):
            log("a worker failed; nothing written")
            return 1
        rows = [r for p in parts for r in read_results(p)]
    out += [r for name in SETUPS for r in rows if r["setup"] == name]
    write_results(args.out, COMMAND, FIELDS, out)
    log(f"wrote {args.out}: {len(out)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
