"""Chapter 14's batch-size sweep: does LoRA lose more than full fine-tuning as batches grow?

    .venv/bin/python -m tools.sweep_ch14_batch        # about 40 minutes on 2 cores

"LoRA Without Regret" (2025) reports LoRA less tolerant of large batches than full fine-tuning. Here, on chapter
05's task and protocol (MiniLM, sentiment, AdamW, linear decay, clipping at 1), LoRA r=8 on query and value
(chapter 05's) and full fine-tuning train for one epoch of the 1,600 training reviews at each batch size of
``BATCHES`` (so ``1600 / batch`` steps: every batch size sees the same examples, once). Each (method, batch)
gets its own learning rate, chosen on the validation accuracy of seed 0 from a ladder
(``tools.ladder.choose_rate``: inside the rates tried); the chosen rate is then trained with seeds 0, 1 and 2
and scored once on test. Rows go to ``results/ch14_batch.csv``.
"""
from __future__ import annotations

import pathlib
import time

from minilora.course.experiments import SETUPS, accuracy, train_task

if __package__:  # python -m tools.sweep_ch14_batch
    from .ladder import choose_rate
    from .results_csv import write_results
else:  # python tools/sweep_ch14_batch.py
    from ladder import choose_rate
    from results_csv import write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "ch14_batch.csv"
EXAMPLES = 1600  # one epoch of the training split
BATCHES = [4, 16, 64]
METHODS = {"LoRA r=8": SETUPS["LoRA r=8"], "full fine-tune": SETUPS["full fine-tune"]}
LADDERS = {"LoRA r=8": [5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2],
           "full fine-tune": [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3]}
START = {"LoRA r=8": [2e-3, 5e-3, 1e-2], "full fine-tune": [5e-5, 1e-4, 2e-4]}
SEEDS = [0, 1, 2]
FIELDS = ["method", "batch_size", "steps", "lr", "seed", "split", "accuracy", "chosen"]


def main() -> None:
    t0, out = time.perf_counter(), []
    for method, setup in METHODS.items():
        for batch in BATCHES:
            steps = EXAMPLES // batch

            def score(lr: float, method=method, setup=setup, batch=batch, steps=steps) -> tuple:
                run = train_task("sentiment", setup, lr, seed=0, steps=steps, progress=False, batch_size=batch)
                acc = accuracy(run.model, run.tokenizer, "validation")
                out.append({"method": method, "batch_size": batch, "steps": steps, "lr": f"{lr:g}", "seed": 0,
                            "split": "validation", "accuracy": f"{acc:.4f}", "chosen": 0})
                print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {method} batch {batch} lr {lr:g}: "
                      f"validation {acc:.4f}", flush=True)
                return (acc,)

            best, _ = choose_rate(score, START[method], LADDERS[method])
            for row in out:
                if row["method"] == method and row["batch_size"] == batch:
                    row["chosen"] = int(float(row["lr"]) == best)
            for seed in SEEDS:  # the chosen rate only, on test once
                run = train_task("sentiment", setup, best, seed=seed, steps=steps, progress=False, batch_size=batch)
                out.append({"method": method, "batch_size": batch, "steps": steps, "lr": f"{best:g}", "seed": seed,
                            "split": "test", "accuracy": f"{accuracy(run.model, run.tokenizer, 'test'):.4f}",
                            "chosen": 1})
            write_results(OUT, "python -m tools.sweep_ch14_batch", FIELDS, out)  # a partial file after each
    print(f"wrote {OUT.relative_to(ROOT)}: {len(out)} rows in {(time.perf_counter() - t0) / 60:.0f} min")


if __name__ == "__main__":
    main()
