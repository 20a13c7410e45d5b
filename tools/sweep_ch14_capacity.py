"""Chapter 14's memorisation sweep: how many random labels each adapter stores, against full fine-tuning.

    .venv/bin/python -m tools.sweep_ch14_capacity      # about 45 minutes on 2 cores

``minilora.course.capacity.memorize``: ``N`` distinct truncated MiniLM inputs with labels drawn at random,
``EPOCHS`` passes of chapter 05's protocol, and the fit on the same ``N`` rows as bits stored. Every setup
trains the head; ``"head only"`` trains nothing else, the floor beneath the others. LoRA runs at ranks 1 to 64
on query and value (chapter 05's targets) and on all linear layers, against full fine-tuning.

Memorisation has no held-out split (the labels are noise: there is nothing to generalise), so each setup's
rate is chosen on the quantity measured, the bits seed 0 stores, from a ladder (``tools.ladder.choose_rate``:
inside the rates tried; ties go to the smaller rate). The chosen rate is then trained with seeds 1 and 2 (other
labels, other initialisations), and the three seeds are the result. Rows go to ``results/ch14_capacity.csv``.
``--extend SETUP`` continues a setup's ladder from its rows in the file when its rate was chosen at an end.
"""
from __future__ import annotations

import argparse
import pathlib
import time

from minilora import LoRAConfig
from minilora.course.capacity import memorize

if __package__:  # python -m tools.sweep_ch14_capacity
    from .ladder import choose_rate
    from .results_csv import read_results, write_results
else:  # python tools/sweep_ch14_capacity.py
    from ladder import choose_rate
    from results_csv import read_results, write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "ch14_capacity.csv"
N, EPOCHS, SEEDS = 1024, 10, [0, 1, 2]
QV = ["query", "value"]
SETUPS = {
    "head only": "head",
    **{f"LoRA r={r} q,v": LoRAConfig(r=r, lora_alpha=2 * r, target_modules=QV, modules_to_save=["classifier"])
       for r in (1, 4, 16, 64)},
    **{f"LoRA r={r} all-linear": LoRAConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                            modules_to_save=["classifier"]) for r in (1, 16)},
    "full fine-tune": "full",
}
LADDERS = {"head": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1], "lora": [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2],
           "full": [2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3]}
START = {"head": [1e-2, 3e-2, 1e-1], "lora": [2e-3, 5e-3, 1e-2], "full": [1e-4, 2e-4, 5e-4]}
COMMAND = "python -m tools.sweep_ch14_capacity"
FIELDS = ["setup", "trainable", "n", "epochs", "lr", "seed", "accuracy", "bits", "final_loss", "chosen"]


def sweep(name: str, done: list[dict], log) -> list[dict]:
    """``name``'s rows: its ladder (rates already in ``done`` are not trained again) and seeds 1, 2 at the best."""
    setup, out = SETUPS[name], []
    kind = setup if setup in ("head", "full") else "lora"
    cached = {(float(r["lr"]), int(r["seed"])): r for r in done if r["setup"] == name}

    def run(lr: float, seed: int) -> tuple:
        row = cached.get((lr, seed))
        if row is None:
            r = memorize(setup, N, lr, seed, EPOCHS)
            per_epoch = len(r.losses) // EPOCHS
            row = {"setup": name, "trainable": r.trainable, "n": N, "epochs": EPOCHS, "lr": f"{lr:g}", "seed": seed,
                   "accuracy": f"{r.accuracy:.4f}", "bits": f"{r.bits:.1f}",
                   "final_loss": f"{sum(r.losses[-per_epoch:]) / per_epoch:.4f}"}
            log(f"{name} lr {lr:g} seed {seed}: fit {r.accuracy:.4f}, {r.bits:.0f} bits")
        out.append({**row, "chosen": 0})
        return (float(row["bits"]),)

    start = sorted({lr for lr, seed in cached if seed == 0}) or START[kind]
    best, _ = choose_rate(lambda lr: run(lr, 0), start, LADDERS[kind], extensions=4 if cached else 2)
    for seed in SEEDS[1:]:
        run(best, seed)
    for row in out:
        row["chosen"] = int(float(row["lr"]) == best)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extend", metavar="SETUP", choices=list(SETUPS),
                        help="continue SETUP's ladder from its rows in the file (while the best is at an end)")
    args = parser.parse_args()
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {msg}", flush=True)

    if args.extend:
        rows = read_results(OUT)
        new = sweep(args.extend, rows, log)
        first = next(i for i, r in enumerate(rows) if r["setup"] == args.extend)
        rest = [r for r in rows if r["setup"] != args.extend]
        write_results(OUT, f"{COMMAND} && {COMMAND} --extend '{args.extend}'", FIELDS,
                      rest[:first] + new + rest[first:])
        return
    out = []
    for name in SETUPS:
        out += sweep(name, [], log)
        write_results(OUT, COMMAND, FIELDS, out)  # a partial file after each setup
    log(f"wrote {OUT.relative_to(ROOT)}: {len(out)} rows")


if __name__ == "__main__":
    main()
