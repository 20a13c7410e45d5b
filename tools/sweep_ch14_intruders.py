"""Chapter 14's lambda sweep: what shrinking intruder dimensions costs the task and gives back to the base model.

    .venv/bin/python -m tools.sweep_ch14_intruders      # about 25 minutes on 2 cores

At the rates chosen on validation (``results/ch14_sweep.csv``) almost no adapter has an intruder dimension,
so ``reduce_intruder_dimension`` would return it unchanged. The sweep therefore takes the two settings of
that file where intruders do appear: LoRA r=64 on q,v at 2e-3 (twice its chosen rate) and LoRA r=1 on q,v at
1e-2 (its chosen rate). Each is trained with chapter 07's protocol (``minilora.course.chat_runs.train``) for
seeds 0, 1 and 2; ``minilora.reduce_intruder_dimension`` (top 10, |cos| < 0.5) then makes a new adapter at
each lambda of ``LAMBDAS``, scored as the sweep scores a run: chapter 07's exact match on the validation split
(learning; lambda is a choice, so the test split is not used), the quiz and the drift (forgetting,
``minilora.course.forgetting``), and the intruders left (``minilora.course.chat_runs.intruders``).
lambda = 1 is the adapter as trained. Rows go to ``results/ch14_intruders.csv``.
"""
from __future__ import annotations

import copy
import pathlib
import time

from minilora.course.chat_runs import forgetting, intruders, task_scores, train
from minilora.course.models import load_chat_model
from minilora.intruders import reduce_intruder_dimension

if __package__:  # python -m tools.sweep_ch14_intruders
    from .results_csv import write_results
    from .sweep_ch14 import SEEDS, SETUPS
else:  # python tools/sweep_ch14_intruders.py
    from results_csv import write_results
    from sweep_ch14 import SEEDS, SETUPS

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "ch14_intruders.csv"
SETTINGS = [("LoRA r=64 q,v", 2e-3), ("LoRA r=1 q,v", 1e-2)]
LAMBDAS = [1.0, 0.75, 0.5, 0.25, 0.0]
FIELDS = ["setup", "lr", "seed", "mitigation_lambda", "exact_match", "contains", "quiz_accuracy", "neutral_nll",
          "intruders_attention", "intruders_mlp", "layers_attention", "layers_mlp"]


def main() -> None:
    t0, out = time.perf_counter(), []
    base, _ = load_chat_model()
    for name, lr in SETTINGS:
        for seed in SEEDS:
            trained, tok, _ = train(SETUPS[name], lr, seed, lambda model, tok: {})
            for lam in LAMBDAS:
                model = copy.deepcopy(trained)
                if lam != 1.0:
                    reduce_intruder_dimension(model, mitigation_lambda=lam, logging_sink=None)
                exact, contains = task_scores(model, tok, "validation")
                row = {"setup": name, "lr": f"{lr:g}", "seed": seed, "mitigation_lambda": lam,
                       "exact_match": f"{exact:.1f}", "contains": f"{contains:.1f}", **forgetting(model, tok),
                       **intruders(model, base)}
                out.append(row)
                minutes = (time.perf_counter() - t0) / 60
                print(f"[{minutes:5.1f} min] {name} lr {lr:g} seed {seed} lambda {lam}: {row}", flush=True)
            write_results(OUT, "python -m tools.sweep_ch14_intruders", FIELDS, out)


if __name__ == "__main__":
    main()
