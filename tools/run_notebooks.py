"""Execute the chapter notebooks in a fresh kernel: store their outputs, or time them.

    python tools/run_notebooks.py 05 07          # execute chapters 05 and 07 (and their solutions) in place
    python tools/run_notebooks.py --timings      # time every chapter; print the table (outputs unchanged)
    python tools/run_notebooks.py --timings --write-runtimes
                                                 # ... and write the runtimes into README.md's chapter
                                                 # table and into each chapter's title cell (make timings)
    python tools/run_notebooks.py --write-runtimes
                                                 # execute every chapter in place and write the runtimes
                                                 # measured as they ran (make notebooks)

Each chapter's peak memory is measured too: the high-water mark of the kernel process's resident set
(VmHWM in /proc/<pid>/status, read after every cell, Linux only), which is what a laptop must have
free to run that chapter. --write-runtimes writes it into the README table's "peak memory" column,
and stores beside the table the result of `make doctor`'s calibration benchmark on this machine,
which make doctor compares a laptop with to estimate the course's runtime there.

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


def peak_rss(pid: int | None) -> int | None:
    """The peak resident set size of process ``pid`` in bytes (VmHWM), or None where /proc has no such
    line (macOS, Windows, or the process is gone)."""
    if pid is None:
        return None
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.M)
    return int(m.group(1)) * 1024 if m else None


def execute(path: pathlib.Path, store: bool) -> tuple[float, int | None]:
    """Run a notebook top to bottom in a fresh kernel; with ``store``, write it back with tidied outputs.
    Returns (seconds, the kernel's peak resident memory in bytes or None where it cannot be read)."""
    nb = nbformat.read(path, as_version=4)
    peak: list[int] = []

    def after_cell(**_):
        pid = getattr(getattr(client.km, "provisioner", None), "pid", None)
        if (rss := peak_rss(pid)) is not None:
            peak.append(rss)

    client = NotebookClient(nb, timeout=900, kernel_name="python3", on_cell_executed=after_cell,
                            resources={"metadata": {"path": str(path.parent)}})
    t = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t
    if store:
        for cell in nb.cells:
            if cell.cell_type == "code":
                tidy_outputs(cell)
        nbformat.write(nb, path)
    return seconds, max(peak, default=None)


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 100 else f"{seconds / 60:.1f} min"


def fmt_bytes(n: int | None) -> str:
    """A peak memory as the README shows it: MB below 1 GB (2 significant digits, at least), then GB."""
    if n is None:
        return "–"
    mb = n / 1e6
    if mb < 1000:
        return f"{mb:.0f} MB" if mb >= 100 else f"{mb:.2g} MB"
    return f"{mb / 1000:.1f} GB"


def update_table(text: str, times: dict[str, tuple[float, int | None, float | None]],
                 calibration: str | None = None) -> str:
    """The README text with the runtime, peak memory and solutions columns (the last three) of the
    chapter table rows in ``times`` replaced; other rows and the rest of the text unchanged. With
    ``calibration`` (the doctor benchmark's result on this machine), its comment line is written too."""
    block = text[text.index(START) + len(START):text.index(END)]
    lines = []
    for line in block.strip("\n").splitlines():
        m = re.match(r"^\| (\d\d) \|", line)
        if m and m.group(1) in times:
            cells = line.split("|")
            t, mem, s = times[m.group(1)]
            cells[-4:-1] = f" {fmt(t)} ", f" {fmt_bytes(mem)} ", f" {fmt(s)} "
            line = "|".join(cells)
        if calibration is None or not line.startswith("<!-- calibration:"):
            lines.append(line)
    if calibration is not None:
        lines.append(calibration)
    return text.replace(block, "\n" + "\n".join(lines) + "\n")


def calibration_comment(ms: float) -> str:
    """The line `make doctor` reads to compare a laptop with the machine that measured the table."""
    return (f"<!-- calibration: {ms:.1f} ms per step, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, CPU capability {torch.backends.cpu.get_cpu_capability()} -->")


def write_runtimes(times: dict[str, tuple[float, int | None, float | None]], root: pathlib.Path = ROOT,
                   calibration: str | None = None) -> None:
    """Put the measured runtimes and peak memory into README.md's chapter table, and the runtimes into
    each chapter's title cell. ``times`` maps a chapter number to (seconds, peak bytes, solution seconds)."""
    readme = root / "README.md"
    readme.write_text(update_table(readme.read_text(), times, calibration))
    for num, (t, _, _) in times.items():
        path = next((root / "notebooks").glob(f"{num}_*.ipynb"))
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
    calibration = None
    if args.write_runtimes:  # make doctor's benchmark, on the same idle machine as the runtimes
        if __package__:  # python -m tools.run_notebooks (make notebooks, make timings)
            from .doctor import benchmark  # here, not at the top: only --write-runtimes measures
        else:  # python tools/run_notebooks.py: Python puts tools/ first on sys.path
            from doctor import benchmark

        calibration = calibration_comment(benchmark())
        print(calibration, flush=True)
    times = {}
    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        num = nb.name[:2]
        if args.only and num not in args.only:
            continue
        sol = NOTEBOOKS / "solutions" / nb.name
        t_nb, mem = execute(nb, store=not args.timings)
        t_sol = execute(sol, store=not args.timings)[0] if sol.exists() and not args.no_solutions else None
        times[num] = (t_nb, mem, t_sol)
        print(f"{nb.name:<40} {fmt(t_nb):>8}   peak memory {fmt_bytes(mem):>7}   solutions {fmt(t_sol):>8}",
              flush=True)
    print(f"{'all chapters':<40} {fmt(sum(t for t, _, _ in times.values())):>8}   "
          f"(+ solutions {fmt(sum(s or 0 for _, _, s in times.values()))})")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, Python {sys.version.split()[0]}")
    if args.write_runtimes:
        write_runtimes(times, calibration=calibration)
        print("README.md and the chapters' title cells updated")


if __name__ == "__main__":
    main()
