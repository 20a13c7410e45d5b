"""The sweep behind chapter 05's results: every configuration, its learning rates, three seeds.

    .venv/bin/python tools/sweep_ch05.py            # everything: 67 minutes on 2 AVX2 cores
    .venv/bin/python tools/sweep_ch05.py --seeds 0 1 2 3 4

For each configuration of ``minilora.course.experiments.SETUPS`` and each of its ``LEARNING_RATES``, train
with ``train_sentiment`` for every seed and measure validation accuracy. The learning rate with the
best mean validation accuracy is chosen; only the models trained at that rate are then evaluated on
the test split, once. The linear probe does the same with its regularisation ``C``. Every run is a row
of ``results/ch05_sweep.csv``, whose first line names the command that wrote it; ``test_accuracy`` is
empty for the learning rates that were not chosen (their models never saw the test split).
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

from minilora.counting import count_parameters
from minilora.course.data import load_sentiment
from minilora.course.experiments import (
    LEARNING_RATES,
    PROBE_C,
    SETUPS,
    STEPS,
    accuracy,
    build_model,
    fit_probe,
    sentence_embeddings,
    train_sentiment,
)
from minilora.course.models import load_encoder

if __package__:  # python -m tools.sweep_ch05, or imported as tools.sweep_ch05
    from .results_csv import write_results
else:  # python tools/sweep_ch05.py: Python puts tools/ first on sys.path
    from results_csv import write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "ch05_sweep.csv"
FIELDS = ["configuration", "trainable", "trainable_percent", "hyperparameter", "value", "seed", "steps",
          "validation_accuracy", "test_accuracy", "chosen"]
PROBE_TRAINABLE = 384 * 2 + 2  # the head of a 2-way classifier on MiniLM's 384-dimensional embeddings


def probe_rows(seeds: list[int]) -> list[dict]:
    """The linear probe: deterministic, so every seed gives the same numbers (listed to show it)."""
    encoder, tokenizer = load_encoder()
    splits = {s: load_sentiment(s) for s in ("train", "validation", "test")}
    features = {s: sentence_embeddings(encoder, tokenizer, rows) for s, rows in splits.items()}
    labels = {s: np.array([r["label"] == "positive" for r in rows]) for s, rows in splits.items()}
    fits = {C: fit_probe(features, labels, C) for C in PROBE_C}
    best = max(PROBE_C, key=lambda C: (fits[C][1], -C))  # ties: the stronger regularisation
    test = float(fits[best][0].score(features["test"], labels["test"]))
    total = count_parameters(load_encoder(num_labels=2)[0])  # the classifier the probe stands in for
    return [dict(configuration="linear probe", trainable=PROBE_TRAINABLE,
                 trainable_percent=f"{100 * PROBE_TRAINABLE / total:.4f}", hyperparameter="C", value=f"{C:g}",
                 seed=seed, steps="", validation_accuracy=f"{fits[C][1]:.4f}",
                 test_accuracy=f"{test:.4f}" if C == best else "", chosen=int(C == best))
            for C in PROBE_C for seed in seeds]


def setup_rows(name: str, seeds: list[int]) -> list[dict]:
    rows, states = [], {}
    for lr in LEARNING_RATES[name]:
        for seed in seeds:
            t = time.perf_counter()
            run = train_sentiment(SETUPS[name], lr, seed, progress=False)
            val = accuracy(run.model, run.tokenizer, "validation")
            states[lr, seed] = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
            rows.append(dict(configuration=name, trainable=run.trainable,
                             trainable_percent=f"{100 * run.fraction:.4f}", hyperparameter="lr", value=f"{lr:g}",
                             seed=seed, steps=STEPS, validation_accuracy=f"{val:.4f}", test_accuracy="", chosen=0))
            print(f"  {name:<20} lr {lr:<7g} seed {seed}: validation {val:.1%} ({time.perf_counter() - t:.0f} s)",
                  flush=True)
    mean_val = {lr: statistics.mean(float(r["validation_accuracy"]) for r in rows if r["value"] == f"{lr:g}")
                for lr in LEARNING_RATES[name]}
    best = max(LEARNING_RATES[name], key=lambda lr: (mean_val[lr], -lr))  # ties: the smaller rate
    for row in rows:
        if row["value"] == f"{best:g}":  # only these models see the test split, once each
            model, tokenizer = build_model(SETUPS[name], row["seed"])
            model.load_state_dict(states[best, row["seed"]])
            row["test_accuracy"] = f"{accuracy(model.eval(), tokenizer, 'test'):.4f}"
            row["chosen"] = 1
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per learning rate (>= 3)")
    args = ap.parse_args()
    if len(set(args.seeds)) < 3:
        raise SystemExit("give at least three different seeds: the results report mean ± std.")
    t0 = time.perf_counter()
    rows = probe_rows(args.seeds)
    for name in SETUPS:
        rows += setup_rows(name, args.seeds)
    write_results(OUT, f"python tools/sweep_ch05.py --seeds {' '.join(map(str, args.seeds))}", FIELDS, rows)
    minutes = (time.perf_counter() - t0) / 60
    print(f"wrote {OUT}: {len(rows)} rows in {minutes:.0f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
