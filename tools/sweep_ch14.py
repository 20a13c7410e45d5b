"""Chapter 14's learning-forgetting sweep: LoRA at several ranks and targets against full fine-tuning.

    .venv/bin/python -m tools.sweep_ch14            # about 80 minutes on 2 cores

Every setup trains SmolLM2-135M-Instruct on chapter 07's instructions exactly as chapter 07 does (30 AdamW
steps of 8 length-grouped examples, seeded), from the same batches:

* LoRA on q_proj and v_proj at r = 1, 8 (chapter 07's) and 64, lora_alpha = 2r;
* at an equal budget of trainable numbers (within 2% of all-linear r=8's 2,442,240): attention only
  (q, k, v, o) at r = 21, the MLP only (gate, up, down) at r = 13, and all-linear at r = 8;
* full fine-tuning (every weight trains; the same AdamW).

For each setup the learning rate is chosen on the **validation** split (exact match, then "contains", then the
smaller rate) from a ladder of rates: three to start, extended by one rate at a time in the direction of the
best while the best is at an end of what was tried (at most two extensions), so that the chosen rate lies
inside its grid. Seeds 1 and 2 are then trained at the chosen rate; seeds 0, 1 and 2 at that rate are scored
once on the **test** split.

Every run also records, after steps 10, 20 and 30 (one optimizer throughout):

* the mean training loss of those 10 steps;
* **forgetting**, two ways (``minilora.course.forgetting``): the general-knowledge quiz's accuracy (117
  questions scored by log-likelihood) and the mean NLL per token of the base model's own continuations of 40
  neutral prompts;

and at the end, **intruder dimensions** (``minilora.intruders.intruder_dimensions``, top 10, |cos| < 0.5) of
W + dW against W in every adapted layer (for full fine-tuning: every linear layer of the blocks), counted
per layer type.

Rows go to ``results/ch14_sweep.csv`` (one per run and checkpoint); its first line names the command.
``--extend SETUP ...`` continues a setup's ladder from the rates its rows tried (for a rate chosen at an end of
the ladder as it was), and replaces its rows. The
adapters of the chosen rate's three seeds are saved (PEFT's files) under ``ADAPTERS`` in the course's model
cache, so that later analyses (intruder dimensions per layer, ``reduce_intruder_dimension``'s lambda) start
from the very adapters the table scores, without training them again.
"""
from __future__ import annotations

import functools
import pathlib
import sys
import time

import minilora
from minilora import LoRAConfig
from minilora.course.chat_runs import STEPS, forgetting, intruders, task_scores, train
from minilora.course.models import cache_dir, load_chat_model

if __package__:  # python -m tools.sweep_ch14
    from .ladder import choose_rate
    from .results_csv import read_results, write_results
else:  # python tools/sweep_ch14.py
    from ladder import choose_rate
    from results_csv import read_results, write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "ch14_sweep.csv"
ADAPTERS = cache_dir() / "ch14_adapters"  # <setup>/seed<k>: the chosen rate's adapters
QV, ATTN, MLP = ["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj", "down_proj"]
SETUPS = {
    "LoRA r=1 q,v": LoRAConfig(r=1, lora_alpha=2, target_modules=QV),
    "LoRA r=8 q,v": LoRAConfig(r=8, lora_alpha=16, target_modules=QV),
    "LoRA r=64 q,v": LoRAConfig(r=64, lora_alpha=128, target_modules=QV),
    "LoRA r=21 attention": LoRAConfig(r=21, lora_alpha=42, target_modules=ATTN),
    "LoRA r=13 MLP": LoRAConfig(r=13, lora_alpha=26, target_modules=MLP),
    "LoRA r=8 all-linear": LoRAConfig(r=8, lora_alpha=16, target_modules="all-linear"),
    "full": "full",
}
LORA_LADDER = [2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2]
FULL_LADDER = [2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4]
START = {"lora": [5e-4, 1e-3, 2e-3], "full": [1e-5, 2e-5, 5e-5]}
SEEDS = [0, 1, 2]
FIELDS = ["setup", "trainable", "lr", "seed", "step", "train_loss", "quiz_accuracy", "neutral_nll", "split",
          "exact_match", "contains", "chosen", "intruders_attention", "intruders_mlp", "layers_attention",
          "layers_mlp"]


@functools.cache
def base_model():
    """The untrained SmolLM2, loaded once: the reference of every run's intruder count."""
    return load_chat_model()[0]


def run_rows(name, setup, lr, seed, split, log, trained=None) -> tuple[list[dict], tuple, object]:
    """Train (or take ``trained``: (model, tok, checkpoints)) and score on ``split``; the rows and the run."""
    model, tok, checkpoints = trained or train(setup, lr, seed, forgetting)
    scores = task_scores(model, tok, split)
    extra = intruders(model, base_model())
    trainable = minilora.get_nb_trainable_parameters(model)[0]
    rows = [{"setup": name, "trainable": trainable, "lr": f"{lr:g}", "seed": seed, **c, "split": split,
             "exact_match": f"{scores[0]:.1f}" if c["step"] == STEPS else "",
             "contains": f"{scores[1]:.1f}" if c["step"] == STEPS else "", "chosen": 0,
             **(extra if c["step"] == STEPS else {})} for c in checkpoints]
    log(f"{name:<20} lr {lr:<7g} seed {seed} {split:<10} exact {scores[0]:5.1f} contains {scores[1]:5.1f} "
        f"quiz {checkpoints[-1]['quiz_accuracy']} nll {checkpoints[-1]['neutral_nll']} {extra}")
    return rows, scores, (model, tok, checkpoints)


def choose(name, setup, log) -> tuple[float, list[dict], object]:
    """The rate chosen on validation, the rows, and the chosen rate's seed-0 run (model, tok, checkpoints)."""
    rows, scored, kept = [], {}, {}

    def score(lr: float) -> tuple:
        r, scores, run = run_rows(name, setup, lr, 0, "validation", log)
        rows.extend(r)
        scored[lr] = scores
        if max(scored, key=lambda x: (*scored[x], -x)) == lr:  # keep only the best run so far (memory)
            kept.clear()
            kept[lr] = run
        return scores

    kind = "full" if setup == "full" else "lora"
    best, _ = choose_rate(score, START[kind], FULL_LADDER if setup == "full" else LORA_LADDER)
    for row in rows:
        row["chosen"] = int(float(row["lr"]) == best)
    return best, rows, kept[best]


def extend(name: str, log, command: str) -> None:
    """Continue ``name``'s ladder from the rates its rows in ``OUT`` tried, while the best is at an end; if the
    chosen rate changes, train and test its three seeds again. The setup's rows in ``OUT`` are replaced."""
    rows, setup = read_results(OUT), SETUPS[name]
    done = {float(r["lr"]): r for r in rows if r["setup"] == name and r["split"] == "validation" and r["step"] == "30"}
    old = next(float(r["lr"]) for r in done.values() if r["chosen"] == "1")
    new_rows = [r for r in rows if r["setup"] == name and r["split"] == "validation"]

    def score(lr: float) -> tuple:
        if lr in done:
            return float(done[lr]["exact_match"]), float(done[lr]["contains"])
        r, scores, _ = run_rows(name, setup, lr, 0, "validation", log)
        new_rows.extend(r)
        return scores

    best, _ = choose_rate(score, sorted(done), FULL_LADDER if setup == "full" else LORA_LADDER, extensions=4)
    for row in new_rows:
        row["chosen"] = int(float(row["lr"]) == best)
    if best == old:
        new_rows += [r for r in rows if r["setup"] == name and r["split"] == "test"]
    else:
        for seed in SEEDS:
            test_rows, _, (model, _, _) = run_rows(name, setup, best, seed, "test", log)
            new_rows += [{**row, "chosen": 1} for row in test_rows]
            if setup != "full":
                minilora.save_adapter(model, ADAPTERS / name.replace(" ", "_").replace(",", "") / f"seed{seed}")
    first = next(i for i, r in enumerate(rows) if r["setup"] == name)
    rest = [r for r in rows if r["setup"] != name]
    write_results(OUT, command, FIELDS, rest[:first] + new_rows + rest[first:])
    log(f"{name}: chosen {best:g} (was {old:g})")


def main() -> None:
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {msg}", flush=True)

    if len(sys.argv) > 2 and sys.argv[1] == "--extend":
        names = sys.argv[2:]
        quoted = " ".join(f"'{n}'" for n in names)
        command = f"python -m tools.sweep_ch14 && python -m tools.sweep_ch14 --extend {quoted}"
        for name in names:
            extend(name, log, command)
        return

    base, tok = load_chat_model()
    out = [{"setup": "base", "trainable": 0, "lr": "", "seed": "", "step": 0, "train_loss": "", **forgetting(base, tok),
            "split": "", "exact_match": "", "contains": "", "chosen": ""}]
    for split in ("validation", "test"):
        exact, contains = task_scores(base, tok, split)
        out.append({**out[0], "split": split, "exact_match": f"{exact:.1f}", "contains": f"{contains:.1f}"})
    del base
    for name, setup in SETUPS.items():
        best, rows, seed0 = choose(name, setup, log)
        out += rows
        for seed in SEEDS:  # only the chosen rate sees the test split (seed 0: the very run that chose it)
            trained = seed0 if seed == 0 else None
            rows, _, (model, _, _) = run_rows(name, setup, best, seed, "test", log, trained=trained)
            if setup != "full":
                minilora.save_adapter(model, ADAPTERS / name.replace(" ", "_").replace(",", "") / f"seed{seed}")
            for row in rows:
                row["chosen"] = 1
            out += rows
        write_results(OUT, "python -m tools.sweep_ch14", FIELDS, out)  # after every setup: a partial file
    log(f"wrote {OUT}: {len(out)} rows")


if __name__ == "__main__":
    sys.exit(main())
