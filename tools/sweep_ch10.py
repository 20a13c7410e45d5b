"""The sweep behind chapter 10's comparison: prompt tuning, prefix tuning and LoRA on chapter 07's task.

    .venv/bin/python tools/sweep_ch10.py            # about 45 minutes on 2 cores

Every method trains SmolLM2-135M-Instruct exactly as chapter 07 trains LoRA: 30 AdamW steps of 8
length-grouped instructions (the same batches for every method and seed 0), the model's masked loss.

* **prompt tuning**: ``PromptTuningConfig(20)`` initialised from the embeddings of ``INIT_TEXT`` (PEFT's
  ``prompt_tuning_init="TEXT"``, which Lester et al. found better than random at small scale);
* **prefix tuning**: ``PrefixTuningConfig(20)`` (no ``prefix_projection``), initialised with the keys and values
  the frozen model computes for the same text (``init_prefix_from_text``, Li & Liang's initialisation with real
  words' activations): both methods start as the base model reading that text first. (PEFT's random N(0, 1)
  prefix is a bad start for 30 steps: chapter 10 measures the loss it causes before training.)
* **LoRA**: chapter 07's adapter, r=8, alpha 16 on q_proj and v_proj.

For each method this tool

1. trains seeds 0, 1 and 2 at each learning rate of ``RATES[method]`` (three neighbours on the ladder
   ``LADDER``, one more rate further out each time the best is at an end of what was tried, until it
   is not) and scores exact match and "contains the answer" on the **validation** split (80 items:
   one item is 1.25 points, which is why one seed cannot choose);
2. chooses the rate with the best **mean over the three seeds** of validation exact match (ties: the
   better mean "contains", then the smaller rate);
3. scores only the chosen rate's three models on the **test** split: the test split is used once per
   method and seed.

Chapter 07 chose LoRA's rate with one seed (``results/ch07_sweep.csv``); here LoRA goes through the
same three-seed choice as the other two methods. Where both choose the same rate, LoRA's seed-0 test
scores must equal chapter 07's (the same training, bit for bit), and the tool says whether they do.

It writes ``results/ch10_sweep.csv`` (one row per run, split and skill, with the trainable parameters
and the median seconds per step), ``results/ch10_losses.csv`` (the training loss of every step of every
run) and ``results/ch10_answers.jsonl`` (each method's seed-0 test answers). The first line of each CSV
names the command. The chapter retrains the first steps of two runs live and checks them against the
loss file.
"""
from __future__ import annotations

import csv
import json
import pathlib
import statistics
import sys
import time

from torch.utils.data import DataLoader

import minilora
from minilora import LoRAConfig, inject_lora
from minilora.counting import get_nb_trainable_parameters
from minilora.course.data import length_grouped_batches, load_instructions
from minilora.course.models import CHAT_DIR, load_chat_model, model_path
from minilora.files import write_atomic
from minilora.instruct import ChatCollator, answer_rows, evaluate_contains, evaluate_exact_match, token_budgets
from minilora.prompting import PrefixTuningConfig, PromptTuningConfig, add_prompt_learning, init_prefix_from_text
from minilora.train import fit

if __package__:  # python -m tools.sweep_ch10, or imported as tools.sweep_ch10
    from .results_csv import write_results
else:  # python tools/sweep_ch10.py: Python puts tools/ first on sys.path
    from results_csv import write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT, LOSSES, ANSWERS = (ROOT / "results" / name for name in ("ch10_sweep.csv", "ch10_losses.csv", "ch10_answers.jsonl"))
CH07 = ROOT / "results" / "ch07_sweep.csv"
N_VIRTUAL = 20
INIT_TEXT = "Answer with exactly what is asked, in the format asked for, and nothing else."
STEPS, BATCH, WINDOW = 30, 8, 4  # chapter 07's budget
LADDER = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
RATES = {"prompt": [1e-2, 3e-2, 1e-1], "prefix": [3e-3, 1e-2, 3e-2], "lora": [3e-4, 1e-3, 3e-3]}  # first tries
SEEDS = [0, 1, 2]
FIELDS = ["run", "lr", "seed", "steps", "split", "skill", "exact_match", "contains", "chosen", "trainable",
          "s_per_step"]


def config(method: str):
    """The chapter's adapter for ``method``: "prompt", "prefix" or "lora"."""
    if method == "prompt":
        return PromptTuningConfig(N_VIRTUAL, prompt_tuning_init="TEXT", prompt_tuning_init_text=INIT_TEXT,
                                  tokenizer_name_or_path=str(model_path(CHAT_DIR)))
    if method == "prefix":
        return PrefixTuningConfig(N_VIRTUAL)
    return LoRAConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])


def train(method: str, lr: float, seed: int):
    """Load, seed, add the adapter, STEPS steps on length-grouped batches: chapter 07's training."""
    model, tok = load_chat_model()
    minilora.seed_everything(seed)
    if method == "lora":
        inject_lora(model, config(method))
    else:
        model = add_prompt_learning(model, config(method))
        if method == "prefix":
            init_prefix_from_text(model, tok, INIT_TEXT)
    rows = load_instructions("train")
    collate = ChatCollator(tok)
    lengths = [len(collate.encode(r)["input_ids"]) for r in rows]
    batches = length_grouped_batches(lengths, batch_size=BATCH, seed=seed, window=WINDOW)[:STEPS]
    history = fit(model, DataLoader(rows, batch_sampler=batches, collate_fn=collate), epochs=1, lr=lr,
                  progress=False)
    return model, tok, history


def answer(model, tok, split: str) -> list[str]:
    return answer_rows(model, tok, load_instructions(split), token_budgets(tok, load_instructions("train")),
                       batch_size=64)


def rows_of(method, lr, seed, split, answers, model, history, chosen) -> list[dict]:
    rows = load_instructions(split)
    exact, contains = evaluate_exact_match(answers, rows), evaluate_contains(answers, rows)
    trainable = get_nb_trainable_parameters(model)[0]
    return [dict(run=method, lr=f"{lr:g}", seed=seed, steps=STEPS, split=split, skill=skill,
                 exact_match=f"{exact[skill]:.1f}", contains=f"{contains[skill]:.1f}", chosen=chosen,
                 trainable=trainable, s_per_step=f"{statistics.median(history.step_time):.2f}")
            for skill in exact]


def run(method: str, lr: float, seed: int, losses: list, t0: float):
    """``train``, with the loss of every step appended to ``losses``."""
    model, tok, history = train(method, lr, seed)
    losses += [dict(run=method, lr=f"{lr:g}", seed=seed, step=i + 1, loss=f"{loss:.5f}", seconds=f"{t:.2f}")
               for i, (loss, t) in enumerate(zip(history.train_loss, history.step_time))]
    print(f"{method} lr {lr:g} seed {seed}: final loss {history.train_loss[-1]:.3f} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return model, tok, history


def save(out: list[dict], losses: list[dict], answers: dict[str, list[str]]) -> None:
    lines = [json.dumps({"run": m, "instruction": r["instruction"], "answer": x})
             for m, a in answers.items() for r, x in zip(load_instructions("test"), a)]
    write_atomic(ANSWERS, "\n".join(lines) + "\n")
    write_results(LOSSES, "python tools/sweep_ch10.py", ["run", "lr", "seed", "step", "loss", "seconds"], losses)
    write_results(OUT, "python tools/sweep_ch10.py", FIELDS, out)


def choose(method: str, losses: list, out: list, t0: float) -> tuple[float, dict]:
    """Every seed at every rate (extending the grid while the best is at its end), scored on validation;
    returns the chosen rate and its models by seed."""
    validation = load_instructions("validation")
    score, models, todo, tried = {}, {}, list(RATES[method]), []
    while todo:
        for lr in todo:
            for seed in SEEDS:
                model, tok, history = run(method, lr, seed, losses, t0)
                a = answer(model, tok, "validation")
                score[lr, seed] = (evaluate_exact_match(a, validation)["overall"],
                                   evaluate_contains(a, validation)["overall"])
                out += rows_of(method, lr, seed, "validation", a, model, history, 0)
                models[lr, seed] = model, tok, history
            print(f"{method} lr {lr:g}: validation exact " + ", ".join(f"{score[lr, s][0]:.1f}" for s in SEEDS),
                  flush=True)
        tried = sorted(tried + todo)
        mean = {lr: tuple(statistics.mean(score[lr, s][i] for s in SEEDS) for i in (0, 1)) + (-lr,) for lr in tried}
        best = max(tried, key=mean.get)
        todo = []
        if best == tried[0] and LADDER.index(best) > 0:
            todo = [LADDER[LADDER.index(best) - 1]]
        elif best == tried[-1] and LADDER.index(best) < len(LADDER) - 1:
            todo = [LADDER[LADDER.index(best) + 1]]
        for (lr, seed) in list(models):  # keep only the models of the best rate so far
            if lr != best:
                del models[lr, seed]
    for r in out:
        if r["run"] == method:
            r["chosen"] = int(r["lr"] == f"{best:g}")
    print(f"{method}: chose {best:g} (mean validation exact {mean[best][0]:.1f})", flush=True)
    return best, {seed: models[best, seed] for seed in SEEDS}


def main() -> None:
    t0 = time.perf_counter()
    out, losses, answers = [], [], {}
    for method in RATES:
        best, models = choose(method, losses, out, t0)
        for seed in SEEDS:  # only the chosen rate sees the test split
            model, tok, history = models.pop(seed)
            a = answer(model, tok, "test")
            if seed == 0:
                answers[method] = a
            out += rows_of(method, best, seed, "test", a, model, history, 1)
            del model
        save(out, losses, answers)  # after each method: a later failure keeps what is done
    ch07 = [r for r in csv.DictReader(CH07.read_text().splitlines()[1:]) if r["run"] == "lora"]
    ch07_lr = next(r["lr"] for r in ch07 if r["chosen"] == "1")
    ours_lr = next(r["lr"] for r in out if r["run"] == "lora" and r["chosen"] == 1)
    if ours_lr == ch07_lr:
        theirs = {r["skill"]: r["exact_match"] for r in ch07 if r["split"] == "test" and r["seed"] == "0"}
        ours = {r["skill"]: r["exact_match"] for r in out if r["run"] == "lora" and r["split"] == "test"
                and r["seed"] == 0}
        print(f"LoRA seed 0, test exact match: here {ours}, in chapter 07's sweep {theirs}: "
              f"{'the same' if ours == theirs else 'DIFFERENT'}", file=sys.stderr)
    else:
        print(f"LoRA: three seeds chose {ours_lr}, chapter 07's one seed chose {ch07_lr}", file=sys.stderr)
    print(f"wrote {OUT.name}, {LOSSES.name}, {ANSWERS.name}: {len(out)} rows in "
          f"{(time.perf_counter() - t0) / 60:.0f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
