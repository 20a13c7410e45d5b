"""make kit: a folder for a USB stick, from which a laptop with no network sets the course up.

    python tools/make_kit.py [KIT]        # default KIT: ./kit (make kit, make kit KIT=/media/usb/minilora-kit)

The kit holds
    wheels/   every wheel the course installs, for this platform (OS, CPU, Python version): the project's
              dependencies with its dev extras, at the exact versions of this .venv (pip freeze as
              constraints), torch from the same index `make` uses, pip and setuptools (for the editable
              install of the course);
    models/   the two cached models, as `make assets` left them (MINILORA_CACHE points here);
    course/   the course itself: the committed files of HEAD (git archive);
    site/     the chapters and their solutions as web pages, with their stored outputs (tools/make_site.py on
              course/notebooks/): site/index.html opens in any browser, with no install and no network;
    README.txt  how to use it, and what it was built on.

On the laptop, offline: copy the kit to its disk, then `cd KIT/course && make lab KIT=..`; pip runs with
--no-index --find-links KIT/wheels, and MINILORA_CACHE=KIT/models. A laptop of another platform
(macOS, Windows, another Python) needs a kit built on one like it.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], **kw) -> str:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE, **kw).stdout


def torch_index() -> str:
    """The index `make` installs torch from: $TORCH_INDEX, else what tools/torch_index.sh says ('' = PyPI)."""
    return os.environ.get("TORCH_INDEX") or run(["sh", str(ROOT / "tools" / "torch_index.sh")]).strip()


def constraints(python: str) -> str:
    """This environment's exact versions (pip freeze --all), less the editable course itself."""
    frozen = run([python, "-m", "pip", "freeze", "--all", "--exclude-editable"])
    return "\n".join(line for line in frozen.splitlines() if line and not line.startswith(("-e", "#"))
                     and " @ " not in line) + "\n"


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def readme_text(commit: str, sizes: dict[str, int], n_wheels: int, torch_wheel: str) -> str:
    """The kit's README.txt: what each folder holds (``sizes`` in bytes), then how a laptop uses it."""
    return f"""minilora offline kit
====================
Built from commit {commit} on {platform.system()} {platform.machine()}, Python {platform.python_version()}.
The wheels fit laptops of that platform and Python version only; the web pages in site/ fit any computer.

  wheels/   {sizes['wheels'] / 1e6:6.0f} MB  {n_wheels} wheels, torch: {torch_wheel}
  models/   {sizes['models'] / 1e6:6.0f} MB  all-MiniLM-L6-v2 and SmolLM2-135M-Instruct
  course/   {sizes['course'] / 1e6:6.0f} MB  the course (notebooks, library, data)
  site/     {sizes['site'] / 1e6:6.0f} MB  every chapter and its solutions as web pages, with their outputs

To read the course, on any computer, with no network and nothing to install:
  open site/index.html in a web browser (double-click it); the formulas are typeset from site/_static/.

To run the course, on each laptop, with no network:
  1. copy this folder to the laptop's disk (say ~/minilora-kit); reading models from a USB stick is slow;
  2. cd ~/minilora-kit/course && make lab KIT=..
     (installs from ../wheels with pip --no-index, uses ../models as MINILORA_CACHE, opens JupyterLab);
  3. make doctor KIT=..   (the readiness check: every line should say ok).
Without make: python3 -m venv .venv && .venv/bin/pip install --no-index --find-links ../wheels -e '.[dev]'
then MINILORA_CACHE=$HOME/minilora-kit/models .venv/bin/jupyter lab notebooks/
"""


def add_site(kit: Path, python: str = sys.executable) -> Path:
    """site/: the chapters and solutions of kit/course/notebooks/ as static pages (make site), for a room
    without Wi-Fi to read, MathJax included; returns its index.html. ``python`` needs nbconvert and MathJax
    (the course's dev extras): it is the .venv's."""
    run([python, str(ROOT / "tools" / "make_site.py"), str(kit / "site"), "--solutions",
         "--notebooks", str(kit / "course" / "notebooks")])
    return kit / "site" / "index.html"


def build(kit: Path, python: str = sys.executable) -> Path:
    from minilora.course.env import EXPECTED  # torch's pin (pyproject.toml); here, so that --help needs no torch
    from minilora.course.models import CHAT_DIR, ENCODER_DIR, cache_dir

    missing = [m for m in (ENCODER_DIR, CHAT_DIR) if not (cache_dir() / m / "model.safetensors").exists()]
    if missing:
        raise SystemExit(f"models not cached: {', '.join(missing)}. Run `make assets` first (online).")
    if kit.exists() and any(kit.iterdir()):
        raise SystemExit(f"{kit} exists and is not empty: remove it or name another folder (make kit KIT=...).")
    wheels = kit / "wheels"
    wheels.mkdir(parents=True)

    idx = torch_index()
    with tempfile.TemporaryDirectory() as tmp:
        cons = Path(tmp) / "constraints.txt"
        cons.write_text(constraints(python))
        pins = {line.split("==")[0].lower(): line for line in cons.read_text().splitlines() if "==" in line}
        # torch first, from its index (download.pytorch.org's CPU wheels also carry torch's dependencies)
        torch_cmd = [python, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "-d", str(wheels),
                     "-c", str(cons), f"torch=={EXPECTED['torch']}"]
        run(torch_cmd + (["--index-url", idx] if idx else []))
        # everything else: the wheels of the course's dependencies (built here if only an sdist exists),
        # the course's own wheel, pip and setuptools; torch is found in wheels/ already
        run([python, "-m", "pip", "wheel", "--quiet", "-w", str(wheels), "--find-links", str(wheels),
             "-c", str(cons), f"{ROOT}[dev]", pins.get("pip", "pip"), pins.get("setuptools", "setuptools>=68")])
        for own in wheels.glob("minilora-*.whl"):  # the laptop installs the course from course/, editable
            own.unlink()

    models = kit / "models"
    models.mkdir()
    for m in (ENCODER_DIR, CHAT_DIR):
        shutil.copytree(cache_dir() / m, models / m)

    course = kit / "course"
    course.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD"], check=True,
                             stdout=subprocess.PIPE).stdout
    subprocess.run(["tar", "-x", "-C", str(course)], input=archive, check=True)
    commit = run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).strip()
    add_site(kit, python)

    sizes = {name: tree_size(kit / name) for name in ("wheels", "models", "course", "site")}
    torch_wheel = next(wheels.glob("torch-*.whl")).name
    (kit / "README.txt").write_text(readme_text(commit, sizes, len(list(wheels.glob("*.whl"))), torch_wheel))
    total = sum(sizes.values())
    print(f"kit written to {kit}: {total / 1e9:.2f} GB "
          + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sizes.items()), flush=True)
    return kit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kit", nargs="?", default=str(ROOT / "kit"), help="the folder to write (default: ./kit)")
    build(Path(ap.parse_args().kit).expanduser().resolve())


if __name__ == "__main__":
    main()
