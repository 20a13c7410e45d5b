"""The sweep behind chapter 11's results: two task adapters, a multi-task adapter, and their merges.

    .venv/bin/python tools/sweep_ch11.py            # everything: 36 minutes on 2 cores (other jobs running)
    .venv/bin/python tools/sweep_ch11.py --seeds 0 1 2 3 4

MiniLM with LoRA r=8 (alpha 16) on query and value, chapter 05's protocol
(``minilora.course.experiments``), three ways:

* a **sentiment adapter** and a **domain adapter**, each with its own head (``train_task``);
* a **multi-task adapter**: one body for both tasks, a head per task, the steps alternating between
  the two tasks' batches (``train_multitask``: the same batches as the two runs together).

Each is trained at every rate of ``LEARNING_RATES`` with every seed; the rate with the best mean
validation accuracy (for the multi-task adapter: the mean over both tasks) is chosen, and only its
models see the test split. Then, for every seed, the chosen sentiment and domain adapters' task
vectors are merged (``minilora.task_vectors``) and each task is scored with its own head:

* **task arithmetic** ``lambda * (tau_sentiment + tau_domain)`` for each lambda of ``LAMBDAS``;
* **TIES** and **DARE-TIES** at every (density, lambda) of their grids (DARE's drop seeded by the seed);
* **heads only**: the pretrained body with each task's head, the floor a merge must beat;
* **negation**: ``tau_domain - lambda * tau_sentiment``, scored on validation for every lambda and
  on test at lambda = 1 (no choice is made, so the test split is still used once);
* **negation of a random vector**, Ilharco et al.'s control: ``tau_domain - lambda * rho``, where ``rho``
  is Gaussian noise scaled layer by layer to the norm of ``tau_sentiment`` (drawn with the seed), scored
  as negation is. Only what negation does beyond this control is the sentiment task being removed.

``--merges-only`` keeps the training rows of ``results/ch11_sweep.csv``, retrains only the chosen
sentiment and domain adapters (checking that their validation accuracies equal the file's: the same
adapters), keeps the merges the file already has, computes the settings it lacks (a grid extended,
a new control), and chooses again: minutes instead of half an hour.

Each merge method's (density,) lambda is chosen on the mean over seeds of the mean validation accuracy
over both tasks; only the chosen setting is scored on test. Every run is a row of
``results/ch11_sweep.csv``, whose first line names the command that wrote it.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

from minilora.config import LoRAConfig
from minilora.course.experiments import SETUPS, random_like, task_accuracies, train_multitask, train_task
from minilora.course.models import load_encoder
from minilora.task_vectors import merge_task_vectors, task_vector

if __package__:  # python -m tools.sweep_ch11, or imported as tools.sweep_ch11
    from .results_csv import read_results, write_results
else:  # python tools/sweep_ch11.py: Python puts tools/ first on sys.path
    from results_csv import read_results, write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "ch11_sweep.csv"
FIELDS = ["method", "lr", "lambda", "density", "seed", "val_sentiment", "val_domain", "test_sentiment",
          "test_domain", "chosen"]
SINGLE = SETUPS["LoRA r=8"]  # q, v; r=8, alpha 16; the head in modules_to_save
MULTI = LoRAConfig(r=8, lora_alpha=16, target_modules=["query", "value"])  # train_multitask trains the heads
LEARNING_RATES = [1e-3, 2e-3, 5e-3, 1e-2, 2e-2]
LAMBDAS = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
# TIES' disjoint mean averages where the tasks agree: larger lambdas; DARE's rescaling by 1 / density: smaller ones
MERGE_LAMBDAS = [0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5]
DENSITIES = {"ties": [0.05, 0.1, 0.2, 0.5, 1.0], "dare_ties": [0.01, 0.1, 0.3, 0.5, 0.9]}
NAMES = {"ties": "TIES", "dare_ties": "DARE-TIES"}
NEGATION_LAMBDAS = [0.5, 1.0, 1.5, 2.0]


def fmt(x) -> str:
    return "" if x is None else f"{x:.4f}"


def row(method, seed, val, test=None, lr="", lam="", density="", chosen=0) -> dict:
    test = test or {}
    return dict(method=method, lr=lr if lr == "" else f"{lr:g}", **{"lambda": lam if lam == "" else f"{lam:g}"},
                density=density if density == "" else f"{density:g}", seed=seed,
                val_sentiment=fmt(val.get("sentiment")), val_domain=fmt(val.get("domain")),
                test_sentiment=fmt(test.get("sentiment")), test_domain=fmt(test.get("domain")), chosen=chosen)


def score(r: dict) -> float:
    """The choice criterion: the mean validation accuracy over the tasks the row has."""
    return statistics.mean(float(r[k]) for k in ("val_sentiment", "val_domain") if r[k])


def choose(rows: list[dict], keys: tuple[str, ...]) -> tuple:
    """The setting (values of ``keys``) with the best mean score over seeds; ties: the first in the grid."""
    settings = list(dict.fromkeys(tuple(r[k] for k in keys) for r in rows))
    return max(settings, key=lambda s: statistics.mean(score(r) for r in rows if tuple(r[k] for k in keys) == s))


def single_task(task: str, lr: float, seed: int) -> tuple[dict, dict]:
    """A single-task adapter trained with the chapter's protocol: its task vector and its head."""
    run = train_task(task, SINGLE, lr, seed, progress=False)
    return task_vector(run.model), {task: run.model.classifier.modules_to_save["default"]}


def retrain_chosen(base, tokenizer, rows: list[dict], seeds: list[int]) -> dict:
    """The chosen sentiment and domain adapters of ``rows``, trained again; their validation accuracies
    must equal the file's (training is deterministic), or the merges would not be of the file's adapters."""
    chosen = {seed: {} for seed in seeds}
    for method, task in (("sentiment adapter", "sentiment"), ("domain adapter", "domain")):
        for r in rows:
            if r["method"] != method or r["chosen"] != "1" or int(r["seed"]) not in chosen:
                continue
            vector, heads = single_task(task, float(r["lr"]), int(r["seed"]))
            val = task_accuracies(base, tokenizer, vector, heads, "validation")[task]
            if abs(val - float(r[f"val_{task}"])) > 1e-4:
                raise SystemExit(f"{method} seed {r['seed']}: validation {val:.4f} here, {r[f'val_{task}']} in "
                                 f"{OUT.name}: run the whole sweep (without --merges-only) on this machine.")
            chosen[int(r["seed"])][method] = (vector, heads)
    return chosen


def train_rows(base, tokenizer, seeds: list[int]) -> tuple[list[dict], dict]:
    """Every adapter at every rate and seed; the chosen rate's models scored on test. Returns the rows
    and, per seed, the chosen adapters' task vectors and heads."""
    rows, chosen = [], {seed: {} for seed in seeds}
    for method, task in (("sentiment adapter", "sentiment"), ("domain adapter", "domain"),
                         ("multi-task adapter", None)):  # None: both tasks
        mine, runs = [], {}
        for lr in LEARNING_RATES:
            for seed in seeds:
                t = time.perf_counter()
                if task is None:
                    run = train_multitask(MULTI, lr, seed)
                    runs[lr, seed] = (task_vector(run.model), dict(run.heads))
                else:
                    runs[lr, seed] = single_task(task, lr, seed)
                val = task_accuracies(base, tokenizer, *runs[lr, seed], "validation")  # base + ΔW, the run's head(s)
                mine.append(row(method, seed, val, lr=lr))
                print(f"  {method:<18} lr {lr:<7g} seed {seed}: validation "
                      + ", ".join(f"{k} {v:.1%}" for k, v in val.items()) + f" ({time.perf_counter() - t:.0f} s)",
                      flush=True)
        (best,) = choose(mine, ("lr",))
        for r in mine:
            if r["lr"] == best:
                vector, heads = runs[float(best), r["seed"]]
                test = task_accuracies(base, tokenizer, vector, heads, "test")
                r.update(test_sentiment=fmt(test.get("sentiment")), test_domain=fmt(test.get("domain")), chosen=1)
                chosen[r["seed"]][method] = (vector, heads)
        rows += mine
    return rows, chosen


def merge_rows(base, tokenizer, seeds: list[int], chosen: dict, known: dict | None = None) -> list[dict]:
    """Every merge of every seed's chosen adapters, on validation (and the unchosen settings' test fields
    empty). ``known``: rows already computed from the same adapters, by (method, lambda, density, seed);
    those are taken as they are: neither merged nor evaluated again."""
    known = known or {}
    rows = []

    def add(method, seed, lam, density, merge, heads, with_test=False):  # merge: () -> the merged vector
        key = (method, "" if lam is None else f"{lam:g}", "" if density is None else f"{density:g}", seed)
        if key in known and (known[key]["test_sentiment"] or not with_test):
            old = dict(known[key], seed=seed)
            if not with_test:
                old.update(test_sentiment="", test_domain="", chosen=0)
            rows.append(old)
            return
        vector = merge()
        val = task_accuracies(base, tokenizer, vector, heads, "validation")
        test = task_accuracies(base, tokenizer, vector, heads, "test") if with_test else None
        rows.append(row(method, seed, val, test, lam="" if lam is None else lam,
                        density="" if density is None else density, chosen=int(with_test)))

    for seed in seeds:
        t = time.perf_counter()
        (ts, hs), (td, hd) = chosen[seed]["sentiment adapter"], chosen[seed]["domain adapter"]
        heads = {**hs, **hd}
        add("heads only", seed, None, None, lambda: None, heads, with_test=True)
        for lam in LAMBDAS:
            add("task arithmetic", seed, lam, None, lambda lam=lam: merge_task_vectors([ts, td], [lam, lam]), heads)
        for kind, densities in DENSITIES.items():
            for density in densities:
                for lam in MERGE_LAMBDAS:
                    add(NAMES[kind], seed, lam, density, lambda kind=kind, density=density, lam=lam:
                        merge_task_vectors([ts, td], [lam, lam], kind, density, seed=seed), heads)
        noise = random_like(ts, seed)
        for method, removed in (("negation", ts), ("negation (random)", noise)):
            for lam in NEGATION_LAMBDAS:  # no choice is made: lambda = 1 is scored on test
                add(method, seed, -lam, None, lambda removed=removed, lam=lam:
                    merge_task_vectors([removed, td], [-lam, 1.0]), heads, with_test=lam == 1.0)
        print(f"  merges, seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
    for method, keys in (("task arithmetic", ("lambda",)), ("TIES", ("density", "lambda")),
                         ("DARE-TIES", ("density", "lambda"))):
        mine = [r for r in rows if r["method"] == method]
        best = choose(mine, keys)
        for r in mine:
            if tuple(r[k] for k in keys) == best:  # only the chosen setting sees the test split
                seed = r["seed"]
                (ts, hs), (td, hd) = chosen[seed]["sentiment adapter"], chosen[seed]["domain adapter"]
                lam, density = float(r["lambda"]), float(r["density"]) if r["density"] else None
                kind = {"task arithmetic": "task_arithmetic", "TIES": "ties", "DARE-TIES": "dare_ties"}[method]
                merged = merge_task_vectors([ts, td], [lam, lam], kind, density,
                                            seed=seed if kind != "task_arithmetic" else None)
                test = task_accuracies(base, tokenizer, merged, {**hs, **hd}, "test")
                r.update(test_sentiment=fmt(test["sentiment"]), test_domain=fmt(test["domain"]), chosen=1)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per setting (>= 3)")
    ap.add_argument("--merges-only", action="store_true",
                    help="keep the file's training rows, retrain only the chosen adapters, redo the merges")
    args = ap.parse_args()
    if len(set(args.seeds)) < 3:
        raise SystemExit("give at least three different seeds: the results report mean ± std.")
    t0 = time.perf_counter()
    base, tokenizer = load_encoder(num_labels=2)  # the pretrained body every task vector is added to
    base.eval()
    command = f"python tools/sweep_ch11.py --seeds {' '.join(map(str, args.seeds))}"
    if args.merges_only:
        suffix = " (merges: --merges-only)"
        command = OUT.read_text().splitlines()[0].removeprefix("# written by: ").removesuffix(suffix) + suffix
        old = read_results(OUT)
        rows = [r for r in old if r["method"].endswith("adapter")]
        seeds = sorted({int(r["seed"]) for r in rows})
        if seeds != sorted(args.seeds):
            raise SystemExit(f"{OUT.name} was trained with seeds {seeds}: pass --seeds {' '.join(map(str, seeds))}.")
        chosen = retrain_chosen(base, tokenizer, rows, args.seeds)
        known = {(r["method"], r["lambda"], r["density"], int(r["seed"])): r
                 for r in old if not r["method"].endswith("adapter")}
    else:
        rows, chosen, known = *train_rows(base, tokenizer, args.seeds), None
    rows += merge_rows(base, tokenizer, args.seeds, chosen, known)
    write_results(OUT, command, FIELDS, rows)
    print(f"wrote {OUT}: {len(rows)} rows in {(time.perf_counter() - t0) / 60:.0f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
