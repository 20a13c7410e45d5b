"""Chapter 14's lambda sweep: what shrinking intruder dimensions costs the task and gives back to the base model.

    .venv/bin/python -m tools.sweep_ch14_intruders      # after tools.sweep_ch14; ~2 minutes per adapter

``tools/sweep_ch14.py`` saved the adapters of every LoRA setup's chosen rate, three seeds each. For every one of
them, ``minilora.reduce_intruder_dimension`` (top 10, |cos| < 0.5) makes a new adapter at each lambda of
``LAMBDAS``, and the new adapter is scored as the sweep scores a run: chapter 07's exact match on the
validation split (learning), the quiz and the drift (forgetting, ``minilora.course.forgetting``), and the
intruders left (``minilora.course.chat_runs.intruders``). lambda = 1 is the adapter as trained. Rows go to
``results/ch14_intruders.csv``.
"""
from __future__ import annotations

import pathlib
import time

import minilora
from minilora.course.chat_runs import forgetting, intruders, task_scores
from minilora.course.models import load_chat_model
from minilora.intruders import reduce_intruder_dimension

if __package__:  # python -m tools.sweep_ch14_intruders
    from .results_csv import write_results
    from .sweep_ch14 import ADAPTERS, SEEDS, SETUPS
else:  # python tools/sweep_ch14_intruders.py
    from results_csv import write_results
    from sweep_ch14 import ADAPTERS, SEEDS, SETUPS

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "ch14_intruders.csv"
LAMBDAS = [1.0, 0.75, 0.5, 0.0]
FIELDS = ["setup", "seed", "mitigation_lambda", "exact_match", "contains", "quiz_accuracy", "neutral_nll",
          "intruders_attention", "intruders_mlp", "layers_attention", "layers_mlp"]


def main() -> None:
    t0, out = time.perf_counter(), []
    base, _ = load_chat_model()
    for name, setup in SETUPS.items():
        if setup == "full":
            continue
        for seed in SEEDS:
            folder = ADAPTERS / name.replace(" ", "_").replace(",", "") / f"seed{seed}"
            if not folder.exists():
                raise SystemExit(f"{folder} is missing: run python -m tools.sweep_ch14 first (it saves the adapters).")
            for lam in LAMBDAS:
                model, tok = load_chat_model()
                minilora.load_adapter(model, folder)
                if lam != 1.0:
                    reduce_intruder_dimension(model, mitigation_lambda=lam, logging_sink=None)
                exact, contains = task_scores(model, tok, "validation")
                row = {"setup": name, "seed": seed, "mitigation_lambda": lam, "exact_match": f"{exact:.1f}",
                       "contains": f"{contains:.1f}", **forgetting(model, tok), **intruders(model, base)}
                out.append(row)
                minutes = (time.perf_counter() - t0) / 60
                print(f"[{minutes:5.1f} min] {name} seed {seed} lambda {lam}: {row}", flush=True)
        write_results(OUT, "python -m tools.sweep_ch14_intruders", FIELDS, out)


if __name__ == "__main__":
    main()
