"""The sweep behind chapter 10's comparison: prompt tuning, prefix tuning and LoRA on chapter 07's task.

    .venv/bin/python tools/sweep_ch10.py            # 17 minutes on 2 cores

Every method trains SmolLM2-135M-Instruct exactly as chapter 07 trains LoRA: 30 AdamW steps of 8
length-grouped instructions (the same batches for every method and seed 0), the model's masked loss.

* **prompt tuning**: ``PromptTuningConfig(20)`` initialised from the embeddings of ``INIT_TEXT`` (PEFT's
  ``prompt_tuning_init="TEXT"``, which Lester et al. found better than random at small scale);
* **prefix tuning**: ``PrefixTuningConfig(20)`` (no ``prefix_projection``), initialised with the keys and values
  the frozen model computes for the same text (``init_prefix_from_text``, Li & Liang's initialisation with real
  words' activations): both methods start as the base model reading that text first. (PEFT's random N(0, 1)
  prefix is a bad start for 30 steps: chapter 10 measures the loss it causes before training.)
* **LoRA**: chapter 07's adapter, r=8, alpha 16 on q_proj and v_proj.

For prompt and prefix tuning this tool

1. trains seed 0 at every learning rate of ``RATES[method]`` and scores exact match and "contains the
   answer" on the **validation** split; the rate with the best validation exact match is chosen (ties:
   the better "contains", then the smaller rate);
2. scores that seed-0 model on the **test** split, then trains the chosen rate with seeds 1 and 2 and
   scores them on test: the test split is used once per method and seed.

LoRA's rate was chosen on validation by ``tools/sweep_ch07.py`` with this very protocol
(``results/ch07_sweep.csv``, which also holds its three test seeds) from 1e-3, 2e-3, 3e-3 and 5e-3, and it
chose the lowest, 1e-3. This tool extends that grid downward (``LORA_EXTENSION``, seed 0 on validation, as
chapter 07 chose) and checks that no lower rate beats it; it retrains chapter 07's seed 0 to record its loss
curve and step time, and checks that its test scores equal chapter 07's.

Every rate is chosen with **one seed** (seed 0), on 80 validation items (one item is 1.25 points): the
chapter says so beside the table. ``--lora-extension-only`` adds the LoRA extension to the existing files
without training anything else again.

It writes ``results/ch10_sweep.csv`` (one row per run, split and skill, with the trainable parameters
and the median seconds per step), ``results/ch10_losses.csv`` (the training loss of every step of every
run) and ``results/ch10_answers.jsonl`` (each method's seed-0 test answers). The first line of each CSV
names the command. The chapter retrains the first steps of two runs live and checks them against the
loss file.
"""
from __future__ import annotations

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
    from .results_csv import read_results, write_results
else:  # python tools/sweep_ch10.py: Python puts tools/ first on sys.path
    from results_csv import read_results, write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT, LOSSES, ANSWERS = (ROOT / "results" / name for name in ("ch10_sweep.csv", "ch10_losses.csv", "ch10_answers.jsonl"))
CH07 = ROOT / "results" / "ch07_sweep.csv"
N_VIRTUAL = 20
INIT_TEXT = "Answer with exactly what is asked, in the format asked for, and nothing else."
STEPS, BATCH, WINDOW = 30, 8, 4  # chapter 07's budget
RATES = {"prompt": [1e-2, 3e-2, 1e-1], "prefix": [3e-3, 1e-2, 3e-2, 1e-1]}
LORA_EXTENSION = [3e-4]  # below chapter 07's lowest rate, 1e-3, which it chose
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


def lora_extension(out: list[dict], losses: list[dict], t0: float, ch07: list[dict]) -> None:
    """LoRA seed 0 on validation at each rate of ``LORA_EXTENSION``; refuse to go on if one beats chapter 07's
    choice (``ch07``: its LoRA rows; they would then need the test seeds of a new rate)."""
    validation = load_instructions("validation")
    chosen = next(r for r in ch07 if r["chosen"] == "1" and r["split"] == "validation" and r["skill"] == "overall")
    for lr in LORA_EXTENSION:
        model, tok, history = run("lora", lr, 0, losses, t0)
        a = answer(model, tok, "validation")
        exact, contains = evaluate_exact_match(a, validation)["overall"], evaluate_contains(a, validation)["overall"]
        out += rows_of("lora", lr, 0, "validation", a, model, history, 0)
        print(f"lora lr {lr:g}: validation exact {exact:.1f}, contains {contains:.1f} (chapter 07's choice, "
              f"{chosen['lr']}: {chosen['exact_match']}, {chosen['contains']})", flush=True)
        if (round(exact, 1), round(contains, 1)) >= (float(chosen["exact_match"]), float(chosen["contains"])):
            raise SystemExit(f"LoRA at {lr:g} ties or beats chapter 07's choice on validation: extend further and "
                             "train the test seeds at the new best rate.")


def main() -> None:
    t0 = time.perf_counter()
    if "--lora-extension-only" in sys.argv[1:]:
        out = [r for r in read_results(OUT) if not (r["run"] == "lora" and r["split"] == "validation")]
        losses = [r for r in read_results(LOSSES) if not (r["run"] == "lora" and float(r["lr"]) in LORA_EXTENSION)]
        answers = {}
        for line in ANSWERS.read_text().splitlines():
            a = json.loads(line)
            answers.setdefault(a["run"], []).append(a["answer"])
        lora_extension(out, losses, t0, [r for r in read_results(CH07) if r["run"] == "lora"])
        save(sorted(out, key=lambda r: ["prompt", "prefix", "lora"].index(r["run"])), losses, answers)
        print(f"added the LoRA extension to {OUT.name} and {LOSSES.name}", file=sys.stderr)
        return
    out, losses, answers = [], [], {}
    validation = load_instructions("validation")
    for method, rates in RATES.items():
        val, kept = {}, None  # lr: (exact, contains, -lr); the best model so far answers the test split
        for lr in rates:
            model, tok, history = run(method, lr, 0, losses, t0)
            a = answer(model, tok, "validation")
            val[lr] = (evaluate_exact_match(a, validation)["overall"], evaluate_contains(a, validation)["overall"], -lr)
            out += rows_of(method, lr, 0, "validation", a, model, history, 0)
            if kept is None or val[lr] > kept[0]:
                kept = val[lr], model, tok, history
            print(f"{method} lr {lr:g}: validation exact {val[lr][0]:.1f}, contains {val[lr][1]:.1f}", flush=True)
            del model
        best = max(rates, key=val.get)
        for r in out:
            if r["run"] == method:
                r["chosen"] = int(r["lr"] == f"{best:g}")
        for seed in SEEDS:  # only the chosen rate sees the test split
            model, tok, history = kept[1:] if seed == 0 else run(method, best, seed, losses, t0)
            a = answer(model, tok, "test")
            if seed == 0:
                answers[method] = a
            out += rows_of(method, best, seed, "test", a, model, history, 1)
            del model
        del kept
        save(out, losses, answers)  # after each method: a later failure keeps what is done
    ch07 = [r for r in read_results(CH07) if r["run"] == "lora"]
    lora_extension(out, losses, t0, ch07)
    lora_lr = float(next(r["lr"] for r in ch07 if r["chosen"] == "1"))
    model, tok, history = run("lora", lora_lr, 0, losses, t0)
    answers["lora"] = answer(model, tok, "test")
    out += rows_of("lora", lora_lr, 0, "test", answers["lora"], model, history, 1)
    theirs = {r["skill"]: r["exact_match"] for r in ch07 if r["split"] == "test" and r["seed"] == "0"}
    ours = {r["skill"]: r["exact_match"] for r in out if r["run"] == "lora"}
    print(f"LoRA seed 0, test exact match: here {ours}, in chapter 07's sweep {theirs}: "
          f"{'the same' if ours == theirs else 'DIFFERENT'}", file=sys.stderr)
    save(out, losses, answers)
    print(f"wrote {OUT.name}, {LOSSES.name}, {ANSWERS.name}: {len(out)} rows in "
          f"{(time.perf_counter() - t0) / 60:.0f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
