"""Execute every chapter notebook (and its solutions) in a fresh kernel and time it.

    python tools/time_notebooks.py            # print the table
    python tools/time_notebooks.py --readme   # also write the runtimes into README.md's chapter table

The notebooks are executed in memory: their stored outputs are not changed. Run it on an idle
machine; the README's numbers come from a 2-core CPU.
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
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
START, END = "<!-- runtimes:start -->", "<!-- runtimes:end -->"


def run(path: pathlib.Path) -> float:
    nb = nbformat.read(path, as_version=4)
    t = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3",  # like nbval: cwd is the notebook's folder
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - t


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", action="store_true", help="write the runtimes into README.md")
    ap.add_argument("only", nargs="*", help="chapter numbers to time (default: all)")
    args = ap.parse_args()
    rows = []
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        num = nb.name[:2]
        if args.only and num not in args.only:
            continue
        sol = ROOT / "notebooks" / "solutions" / nb.name
        t_nb = run(nb)
        t_sol = run(sol) if sol.exists() else None
        rows.append((num, t_nb, t_sol))
        print(f"{nb.name:<40} {fmt(t_nb):>8}   solutions {fmt(t_sol):>8}", flush=True)
    total = sum(t for _, t, _ in rows)
    print(f"{'all chapters':<40} {fmt(total):>8}   (+ solutions {fmt(sum(s or 0 for *_, s in rows))})")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    if args.readme:
        readme = ROOT / "README.md"
        text = readme.read_text()
        block = text[text.index(START) + len(START):text.index(END)]
        times = {num: (t, s) for num, t, s in rows}
        out = []
        for line in block.strip("\n").splitlines():
            m = re.match(r"^\| (\d\d) \|", line)
            if m and m.group(1) in times:
                cells = line.split("|")
                t, s = times[m.group(1)]
                cells[-3], cells[-2] = f" {fmt(t)} ", f" {fmt(s)} "
                line = "|".join(cells)
            out.append(line)
        readme.write_text(text.replace(block, "\n" + "\n".join(out) + "\n"))
        print("README.md updated")


if __name__ == "__main__":
    main()
