"""Chapter 15's preference tuning: SFT on the chosen answers, DPO, and DPO after SFT, with LoRA at ranks 1-64.

    .venv/bin/python -m tools.sweep_ch15_dpo        # 1-thread workers; a setup takes 35-65 minutes in one

Every run starts from chapter 07's instruction-tuned SmolLM2 (``chat_runs.instruction_tuned``) and trains
all-linear LoRA (lora_alpha = 2r) for ``preference_runs.STEPS`` steps of ``PAIRS`` preference pairs
(``minilora.course.preference_runs``):

* ``SFT r=8``: the chosen answers, as instruction tuning;
* ``DPO r=1``, ``DPO r=8``, ``DPO r=64``: DPO from the instruction-tuned model, which is the reference;
* ``SFT+DPO r=8``: DPO from each seed's ``SFT r=8`` run at SFT's chosen rate, merged; the SFT model is the
  reference.

The method comparison is made at r=8, the rank comparison on DPO alone (a rank sweep of SFT and SFT+DPO too
would triple the sweep). For each setup the learning rate is chosen on seed 0's **validation** win rate (ties:
the better chapter 07 exact match, then the smaller rate) from a ladder: three rates to start, extended by one
at a time while the best is at an end of what was tried (``tools/ladder.py``), so the chosen rate lies inside
its grid. Seeds 1 and 2 then train at the chosen rate, and the three seeds are scored once on ``test``.

``results/ch15_dpo.csv``: one row per run and split with ``preference_runs.scores`` (win rates, reward margin and
drift against the run's own reference, drift on neutral text, chapter 07 exact match) and the mean DPO loss and
reward accuracy of the last five steps; the instruction-tuned model's scores (setup ``start``).
``results/ch15_dpo_steps.csv``: every step of each setup's chosen seed-0 run. ``results/ch15_answers.jsonl``:
the test answers of the start model and of each setup's chosen seed-0 run. ``--only SETUP ... --out FOLDER``
runs some setups in this process; ``--combine FOLDER ...`` writes the three files from such folders (the setups
that finished); ``--add FOLDER ...`` merges such folders' setups into the committed files (a setup run again
replaces its rows). ``SFT+DPO r=8`` run without ``SFT r=8`` in the same process first trains each seed's SFT model
at the rate the committed file chose for it.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import torch

import minilora
from minilora import LoRAConfig
from minilora.course import preference_runs as pr
from minilora.course.chat_runs import instruction_tuned
from minilora.course.preference_data import PROPERTIES
from minilora.files import write_atomic
from minilora.utils import seed_everything

if __package__:  # python -m tools.sweep_ch15_dpo
    from .ladder import choose_rate
    from .results_csv import read_results, write_results
else:  # python tools/sweep_ch15_dpo.py
    from ladder import choose_rate
    from results_csv import read_results, write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT, STEPS_OUT, ANSWERS_OUT = (ROOT / "results" / f for f in ("ch15_dpo.csv", "ch15_dpo_steps.csv",
                                                              "ch15_answers.jsonl"))
COMMAND = "python -m tools.sweep_ch15_dpo"
SETUPS = {"SFT r=8": ("sft", 8), "DPO r=1": ("dpo", 1), "DPO r=8": ("dpo", 8), "DPO r=64": ("dpo", 64),
          "SFT+DPO r=8": ("sft+dpo", 8)}
LADDER = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2]
START = {"SFT r=8": [2e-4, 5e-4, 1e-3], "DPO r=1": [2e-4, 5e-4, 1e-3], "DPO r=8": [5e-5, 1e-4, 2e-4],
         "DPO r=64": [1e-4, 2e-4, 5e-4], "SFT+DPO r=8": [2e-5, 5e-5, 1e-4]}
SEEDS = [0, 1, 2]
WORKERS = [["SFT r=8", "SFT+DPO r=8"], ["DPO r=8", "DPO r=64"], ["DPO r=1"]]
SCORES = ["win_overall", *(f"win_{p}" for p in PROPERTIES), "margin", "drift", "neutral_nll", "task_exact"]
FIELDS = ["setup", "method", "r", "trainable", "lr", "seed", "split", *SCORES, "dpo_loss", "reward_accuracy",
          "chosen"]
STEP_FIELDS = ["setup", "lr", "seed", "step", "loss", "margin", "accuracy"]


def config(r: int) -> LoRAConfig:
    return LoRAConfig(r=r, lora_alpha=2 * r, target_modules="all-linear")


class Worker:
    """Runs setups, keeping what runs share: the start model's references and each seed's SFT model."""

    def __init__(self, log):
        self.log, self.refs, self.sft = log, {}, {}

    def ref(self, split: str):
        if split not in self.refs:
            model, tok = instruction_tuned()
            self.refs[split] = pr.reference(model, tok, split)
        return self.refs[split]

    def sft_model(self, seed: int) -> dict:
        """The merged weights of ``SFT r=8`` at its chosen rate for ``seed`` (trained here if not trained yet)."""
        if seed not in self.sft:
            lr = chosen_rate("SFT r=8")
            self.log(f"SFT r=8      lr {lr:<7g} seed {seed}: training the start of SFT+DPO")
            model, _, _ = pr.train("sft", config(SETUPS["SFT r=8"][1]), lr, seed)
            self.keep_sft(seed, model)
        return self.sft[seed]

    def keep_sft(self, seed: int, model) -> None:
        merged = minilora.merge_and_unload(model).state_dict()
        self.sft[seed] = {k: v.detach().clone() for k, v in merged.items()}

    def train(self, name: str, lr: float, seed: int):
        method, r = SETUPS[name]
        if method == "sft+dpo":  # the same as pr.train("sft+dpo", ..., sft_lr=SFT's rate), without training SFT again
            model, tok = instruction_tuned()
            model.load_state_dict(self.sft_model(seed))
            seed_everything(seed)
            return model, tok, pr.dpo(model, tok, config(r), lr, seed)
        return pr.train(method, config(r), lr, seed, ref=self.ref("train") if method == "dpo" else None)

    def score(self, name: str, model, tok, split: str) -> dict:
        ref = None if SETUPS[name][0] == "sft+dpo" else self.ref(split)  # after SFT, the reference is the SFT model
        return pr.scores(model, tok, split, ref=ref)

    def row(self, name: str, model, tok, lr: float, seed: int, split: str, steps: list[dict]) -> tuple[dict, list]:
        """A run's row on ``split`` and its answers there."""
        s = self.score(name, model, tok, split)
        tail = steps[-5:]
        self.log(f"{name:<12} lr {lr:<7g} seed {seed} {split:<10}: win {s['win_overall']:5.1f} margin "
                 f"{s['margin']:6.2f} drift {s['drift']:6.2f} task {s['task_exact']:5.1f}")
        return {"setup": name, "method": SETUPS[name][0], "r": SETUPS[name][1], "lr": f"{lr:g}", "seed": seed,
                "trainable": minilora.get_nb_trainable_parameters(model)[0], "split": split,
                **{k: f"{s[k]:.4f}" for k in SCORES},
                "dpo_loss": f"{sum(t['loss'] for t in tail) / len(tail):.4f}" if tail else "",
                "reward_accuracy": f"{sum(t['accuracy'] for t in tail) / len(tail):.3f}" if tail else "",
                "chosen": 0}, s["answers"]

    def sweep(self, name: str) -> tuple[list[dict], list[dict], list[str]]:
        """Choose the rate on seed 0's validation scores, train seeds 1 and 2 there, score the three on test."""
        rows, runs = [], {}

        def score(lr: float) -> tuple:
            model, tok, steps = self.train(name, lr, 0)
            row, _ = self.row(name, model, tok, lr, 0, "validation", steps)
            rows.append(row)
            runs[lr] = [row, steps, (model, tok)]
            key = lambda x: (float(runs[x][0]["win_overall"]), float(runs[x][0]["task_exact"]), -x)  # noqa: E731
            for other in [x for x in runs if x != max(runs, key=key)]:
                runs[other][2] = None  # keep only the best model so far (memory)
            return float(row["win_overall"]), float(row["task_exact"])

        best, _ = choose_rate(score, START[name], LADDER, extensions=2)
        for row in rows:
            row["chosen"] = int(float(row["lr"]) == best)
        step_rows = [{"setup": name, "lr": f"{best:g}", "seed": 0, "step": i + 1,
                      **{k: f"{v:.4f}" for k, v in s.items()}} for i, s in enumerate(runs[best][1])]
        answers: list[str] = []
        for seed in SEEDS:  # only the chosen rate sees the test split
            if seed == 0:
                _, steps, (model, tok) = runs.pop(best)
            else:
                model, tok, steps = self.train(name, best, seed)
                rows.append({**self.row(name, model, tok, best, seed, "validation", steps)[0], "chosen": 1})
            row, seed_answers = self.row(name, model, tok, best, seed, "test", steps)
            rows.append({**row, "chosen": 1})
            answers = answers or seed_answers
            if name == "SFT r=8":  # SFT+DPO starts from it
                self.keep_sft(seed, model)
        return rows, step_rows, answers


def chosen_rate(name: str) -> float:
    """The rate the committed results file chose for ``name``."""
    rates = {float(r["lr"]) for r in read_results(OUT) if r["setup"] == name and r["chosen"] == "1"}
    if len(rates) != 1:
        raise ValueError(f"{OUT.name} has no single chosen rate for {name!r} ({sorted(rates)}); run "
                         f"`{COMMAND} --only {name!r} ...` first.")
    return rates.pop()


def start_rows(log) -> tuple[list[dict], list[str]]:
    """The instruction-tuned model's scores (no adapter: margins and drift are 0) and its test answers."""
    model, tok = instruction_tuned()
    out, answers = [], []
    for split in ("validation", "test"):
        s = pr.scores(model, tok, split)
        out.append({"setup": "start", "method": "", "r": "", "trainable": 0, "lr": "", "seed": "", "split": split,
                    **{k: f"{s[k]:.4f}" for k in SCORES}, "dpo_loss": "", "reward_accuracy": "", "chosen": ""})
        answers = s["answers"]
        log(f"start {split}: win {s['win_overall']:.1f} task {s['task_exact']:.1f}")
    return out, answers


def combine(parts: list[pathlib.Path], log, add: bool = False) -> None:
    """The three results files from the workers' folders, with the start model's rows and answers; with ``add``,
    the committed files' start rows and setups, a setup in ``parts`` replacing its committed rows."""
    rows = [r for p in parts for r in read_results(p / OUT.name)]
    steps = [r for p in parts for r in read_results(p / STEPS_OUT.name)]
    answers = {k: v for p in parts for k, v in json.loads((p / ANSWERS_OUT.name).read_text()).items()}
    if add:
        old = read_results(OUT)
        out = [r for r in old if r["setup"] == "start"]
        lines = [json.loads(line) for line in ANSWERS_OUT.read_text().splitlines()]
        start_answers = [line["start"] for line in lines]
        kept = [name for name in SETUPS if name in lines[0] and name not in answers]
        rows += [r for r in old if r["setup"] in kept]
        steps += [r for r in read_results(STEPS_OUT) if r["setup"] in kept]
        answers |= {name: [line[name] for line in lines] for name in kept}
    else:
        out, start_answers = start_rows(log)
    done = [name for name in SETUPS if name in answers]
    out += [r for name in done for r in rows if r["setup"] == name]
    write_results(OUT, COMMAND, FIELDS, out)
    write_results(STEPS_OUT, COMMAND, STEP_FIELDS, [r for name in done for r in steps if r["setup"] == name])
    prompts = [r["prompt"] for r in pr.load_preferences("test")]
    lines = [json.dumps({"prompt": x, "start": start_answers[i], **{k: answers[k][i] for k in done}},
                        ensure_ascii=False) for i, x in enumerate(prompts)]
    write_atomic(ANSWERS_OUT, "\n".join(lines) + "\n")
    log(f"wrote {OUT.name} ({len(out)} rows: {', '.join(done)}), {STEPS_OUT.name}, {ANSWERS_OUT.name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SETUPS), help="run these setups in this process")
    parser.add_argument("--out", type=pathlib.Path, default=OUT, help="with --only: a folder for the three files")
    parser.add_argument("--combine", nargs="+", type=pathlib.Path, metavar="FOLDER",
                        help="write the results files from folders that --only wrote")
    parser.add_argument("--add", nargs="+", type=pathlib.Path, metavar="FOLDER",
                        help="merge the setups of folders that --only wrote into the committed results files")
    args = parser.parse_args()
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {msg}", flush=True)

    if args.combine or args.add:
        combine(args.combine or args.add, log, add=bool(args.add))
        return 0
    if args.only:
        worker, rows, steps, answers = Worker(log), [], [], {}
        for name in args.only:
            r, s, a = worker.sweep(name)
            rows, steps, answers = rows + r, steps + s, {**answers, name: a}
            args.out.mkdir(parents=True, exist_ok=True)  # after every setup: partial files
            write_results(args.out / OUT.name, COMMAND, FIELDS, rows)
            write_results(args.out / STEPS_OUT.name, COMMAND, STEP_FIELDS, steps)
            write_atomic(args.out / ANSWERS_OUT.name, json.dumps(answers))
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    with tempfile.TemporaryDirectory() as tmp:
        parts = [pathlib.Path(tmp) / f"part{i}" for i in range(len(WORKERS))]
        procs = [subprocess.Popen([sys.executable, "-m", "tools.sweep_ch15_dpo", "--only", *names, "--out", str(p)],
                                  cwd=ROOT, env=env) for names, p in zip(WORKERS, parts)]
        if any([p.wait() for p in procs]):  # wait for every worker
            log("a worker failed; nothing written")
            return 1
        torch.set_num_threads(2)
        combine(parts, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
