"""Execute the chapter notebooks in a fresh kernel: store their outputs, or time them.

    python tools/run_notebooks.py 05 07          # execute chapters 05 and 07 (and their solutions) in place
    python tools/run_notebooks.py --timings      # time every chapter; print the table (outputs unchanged)
    python tools/run_notebooks.py --timings --write-runtimes
                                                 # ... and write the runtimes into README.md's chapter
                                                 # table and into each chapter's title cell (make timings)
    python tools/run_notebooks.py --write-runtimes
                                                 # execute every chapter in place and write the runtimes
                                                 # measured as they ran (make notebooks)

Executing in place is how the notebooks are committed: top to bottom in a fresh kernel, cwd = the
notebook's folder (as nbval runs them). The stored outputs are then tidied for readers, without
changing what they say: the stream outputs of a cell are merged, stdout where consecutive and stderr
into one block, and carriage returns are applied, so that a progress bar is stored once, as it
ended, not once per redraw. Run it on an idle machine: the runtimes are measured as it runs.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import re
import sys
import time

import nbformat
import torch
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
START, END = "<!-- runtimes:start -->", "<!-- runtimes:end -->"
RUNTIME = re.compile(r"(\*\*Runtime:\*\* )([^*\n]*?)( on a 2-core CPU)")
_CR = re.compile(r"[^\n]*\r(?!\n)")  # a line overwritten by a carriage return


def tidy_outputs(cell) -> None:
    """Merge a cell's stream outputs (stdout where consecutive, all stderr into the first stderr
    block) and apply carriage returns, so that each progress bar keeps only its last state."""
    outputs, stderr = [], None
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream" and out["name"] == "stderr":
            if stderr is None:
                stderr = out
                outputs.append(out)
            else:
                stderr["text"] += out["text"]
            continue
        if (out["output_type"] == "stream" and outputs and outputs[-1]["output_type"] == "stream"
                and outputs[-1]["name"] == out["name"]):
            outputs[-1]["text"] += out["text"]
            continue
        outputs.append(out)
    for out in outputs:
        if out["output_type"] == "stream":
            text = out["text"].replace("\r\n", "\n")
            out["text"] = _CR.sub("", text)
    cell["outputs"] = outputs


def execute(path: pathlib.Path, store: bool) -> float:
    """Run a notebook top to bottom; with ``store``, write it back with tidied outputs. Returns seconds."""
    nb = nbformat.read(path, as_version=4)
    t = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - t
    if store:
        for cell in nb.cells:
            if cell.cell_type == "code":
                tidy_outputs(cell)
        nbformat.write(nb, path)
    return seconds


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def write_runtimes(times: dict[str, tuple[float, float | None]]) -> None:
    """Put the measured runtimes into README.md's chapter table and each chapter's title cell."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = text[text.index(START) + len(START):text.index(END)]
    lines = []
    for line in block.strip("\n").splitlines():
        m = re.match(r"^\| (\d\d) \|", line)
        if m and m.group(1) in times:
            cells = line.split("|")
            t, s = times[m.group(1)]
            cells[-3], cells[-2] = f" {fmt(t)} ", f" {fmt(s)} "
            line = "|".join(cells)
        lines.append(line)
    readme.write_text(text.replace(block, "\n" + "\n".join(lines) + "\n"))
    for num, (t, _) in times.items():
        path = next(NOTEBOOKS.glob(f"{num}_*.ipynb"))
        nb = nbformat.read(path, as_version=4)
        title = nb.cells[0]
        if not RUNTIME.search(title.source):
            raise SystemExit(f"{path.name}: the title cell has no '**Runtime:** ... on a 2-core CPU' line to update.")
        title.source = RUNTIME.sub(lambda m: m.group(1) + fmt(t) + m.group(3), title.source)
        nbformat.write(nb, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("only", nargs="*", help="chapter numbers, e.g. 05 07 (default: all)")
    ap.add_argument("--timings", action="store_true", help="time the notebooks; do not change their outputs")
    ap.add_argument("--write-runtimes", action="store_true",
                    help="write the measured runtimes into README.md and the title cells (every chapter only)")
    ap.add_argument("--no-solutions", action="store_true", help="skip the solution notebooks")
    args = ap.parse_args()
    if args.write_runtimes and (args.only or args.no_solutions):
        raise SystemExit("--write-runtimes needs every chapter and its solutions: no chapter numbers, "
                         "no --no-solutions.")
    times = {}
    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        num = nb.name[:2]
        if args.only and num not in args.only:
            continue
        sol = NOTEBOOKS / "solutions" / nb.name
        t_nb = execute(nb, store=not args.timings)
        t_sol = execute(sol, store=not args.timings) if sol.exists() and not args.no_solutions else None
        times[num] = (t_nb, t_sol)
        print(f"{nb.name:<40} {fmt(t_nb):>8}   solutions {fmt(t_sol):>8}", flush=True)
    print(f"{'all chapters':<40} {fmt(sum(t for t, _ in times.values())):>8}   "
          f"(+ solutions {fmt(sum(s or 0 for _, s in times.values()))})")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, Python {sys.version.split()[0]}")
    if args.write_runtimes:
        write_runtimes(times)
        print("README.md and the chapters' title cells updated")


if __name__ == "__main__":
    main()
