"""The sweep behind chapter 07's numbers: the learning rate on validation, then three seeds on test.

    .venv/bin/python tools/sweep_ch07.py            # 18 minutes on 2 AVX2 cores

Chapter 07 trains SmolLM2-135M-Instruct with LoRA r=8 (alpha 16) on q_proj and v_proj for 30 AdamW steps
of 8 length-grouped instructions, the most that fits the chapter's time budget on a 2-core CPU. This tool:

1. trains that setup at each learning rate of ``RATES`` (seed 0) and scores exact match and "contains
   the answer" on the **validation** split; the rate with the best validation exact match is chosen
   (ties: the better "contains", then the smaller rate). One reference run with batches of 16 (the
   whole training split once, twice the time) is recorded too, flagged ``fits_budget=0``;
2. trains the chosen setup with seeds 0, 1 and 2 and scores them on the **test** split, once;
3. answers the test split with the base model (deterministic: greedy decoding), scores the answers, and
   keeps them in ``results/ch07_base_answers.jsonl``.

Every score is a row of ``results/ch07_sweep.csv`` (per skill and overall, in percent); its first line
names the command. The chapter runs seed 0 live and checks that it agrees with the file; it takes the
base model's 120 answers from the answers file, after regenerating some of them to check it.
"""
from __future__ import annotations

import json
import pathlib
import sys
import time

from torch.utils.data import DataLoader

import minilora
from minilora import LoRAConfig, inject_lora
from minilora.course.data import length_grouped_batches, load_instructions
from minilora.course.models import load_chat_model
from minilora.files import write_atomic
from minilora.instruct import ChatCollator, answer_rows, evaluate_contains, evaluate_exact_match, token_budgets
from minilora.train import fit

if __package__:  # python -m tools.sweep_ch07, or imported as tools.sweep_ch07
    from .results_csv import write_results
else:  # python tools/sweep_ch07.py: Python puts tools/ first on sys.path
    from results_csv import write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "ch07_sweep.csv"
ANSWERS = ROOT / "results" / "ch07_base_answers.jsonl"
CONFIG = LoRAConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
STEPS, BATCH, WINDOW = 30, 8, 4
RATES = [1e-3, 2e-3, 3e-3, 5e-3]
REFERENCE = (16, 2e-3)  # batch, rate: the whole training split once; too slow for the chapter
SEEDS = [0, 1, 2]
FIELDS = ["run", "batch_size", "lr", "seed", "steps", "fits_budget", "split", "skill", "exact_match", "contains",
          "chosen"]


def train(batch_size: int, lr: float, seed: int):
    """The chapter's training, exactly: load, seed, inject, STEPS steps on length-grouped batches."""
    model, tok = load_chat_model()
    minilora.seed_everything(seed)
    inject_lora(model, CONFIG)
    rows = load_instructions("train")
    collate = ChatCollator(tok)
    lengths = [len(collate.encode(r)["input_ids"]) for r in rows]
    batches = length_grouped_batches(lengths, batch_size=batch_size, seed=seed, window=WINDOW)[:STEPS]
    fit(model, DataLoader(rows, batch_sampler=batches, collate_fn=collate), epochs=1, lr=lr, progress=False)
    return model, tok


def answer(model, tok, split: str) -> list[str]:
    rows = load_instructions(split)
    return answer_rows(model, tok, rows, token_budgets(tok, load_instructions("train")), batch_size=64)


def score(model, tok, split: str, answers: list[str] | None = None) -> tuple[dict, dict]:
    rows = load_instructions(split)
    answers = answer(model, tok, split) if answers is None else answers
    return evaluate_exact_match(answers, rows), evaluate_contains(answers, rows)


def rows_of(run: str, batch_size, lr, seed, fits: int, split: str, scores: tuple[dict, dict], chosen: int) -> list:
    exact, contains = scores
    return [dict(run=run, batch_size=batch_size, lr=f"{lr:g}" if lr != "" else "", seed=seed,
                 steps=STEPS if run != "base" else "", fits_budget=fits, split=split, skill=skill,
                 exact_match=f"{exact[skill]:.1f}", contains=f"{contains[skill]:.1f}", chosen=chosen)
            for skill in exact]


def main() -> None:
    t0 = time.perf_counter()
    out, val = [], {}
    for batch_size, lr in [(BATCH, lr) for lr in RATES] + [REFERENCE]:
        model, tok = train(batch_size, lr, seed=0)
        val[batch_size, lr] = score(model, tok, "validation")
        print(f"batch {batch_size:2} lr {lr:g}: validation exact {val[batch_size, lr][0]['overall']:.1f}, "
              f"contains {val[batch_size, lr][1]['overall']:.1f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    best = max(RATES, key=lambda lr: (val[BATCH, lr][0]["overall"], val[BATCH, lr][1]["overall"], -lr))
    for (batch_size, lr), scores in val.items():
        fits = int(batch_size == BATCH)
        out += rows_of("lora", batch_size, lr, 0, fits, "validation", scores, int(fits and lr == best))
    for seed in SEEDS:  # only the chosen setup sees the test split
        model, tok = train(BATCH, best, seed)
        out += rows_of("lora", BATCH, best, seed, 1, "test", score(model, tok, "test"), 1)
        print(f"seed {seed}: test done ({time.perf_counter() - t0:.0f} s)", flush=True)
    base, tok = load_chat_model()
    base_answers = answer(base, tok, "test")
    out += rows_of("base", "", "", "", 1, "test", score(base, tok, "test", base_answers), 0)
    lines = [json.dumps({"instruction": r["instruction"], "answer": a}) for r, a in
             zip(load_instructions("test"), base_answers)]
    write_atomic(ANSWERS, "\n".join(lines) + "\n")
    write_results(OUT, "python tools/sweep_ch07.py", FIELDS, out)
    print(f"wrote {OUT}: {len(out)} rows in {(time.perf_counter() - t0) / 60:.0f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
