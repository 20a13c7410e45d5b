"""make doctor: is this laptop ready for the course? One line per check, each failing line with its fix.

    python tools/doctor.py           # make doctor (works before `make lab` too: it then says what is missing)

It checks Python, the cores, free memory and disk, the torch build (CPU or CUDA, and its size on disk),
the two cached models, that a Jupyter kernel starts and imports minilora from this folder, and
estimates the course's runtime here: a ~5-second fp32 benchmark (one MiniLM-sized transformer layer,
forward and backward) is compared with the same benchmark on the machine that measured the README's
chapter table (its result is stored beside the table), and the table's total is scaled by the ratio.

The module gathers facts (``gather``) and judges them (``judge``) separately, so that the judging
is tested on made-up facts. It imports neither torch nor minilora at the top: on a laptop where
the course is not installed yet, it still runs and says so.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- runtimes:start -->", "<!-- runtimes:end -->"
CALIBRATION = re.compile(r"<!-- calibration: ([0-9.]+) ms per step(?:, (.*?))? -->")


def pinned(package: str, pyproject: Path = ROOT / "pyproject.toml") -> str | None:
    """The version ``package`` is pinned to in pyproject.toml (``"name==version"``), the one place the pins are
    written; read as text, so that this works before anything is installed, on any Python."""
    m = re.search(rf'^\s*"{re.escape(package)}==([^"]+)"', pyproject.read_text(encoding="utf-8"), re.M)
    return m.group(1) if m else None


TORCH_PIN = pinned("torch")
MODELS = ("all-MiniLM-L6-v2", "SmolLM2-135M-Instruct")  # minilora.course.models.ENCODER_DIR, CHAT_DIR
RAM_FALLBACK = 1.5e9   # README troubleshooting: SmolLM2 needs about 1.5 GB free (until peak memory is measured)
DISK_NEEDED = 1e9      # adapters, outputs and pip's temporary files
MODELS_SIZE = 0.7e9    # both models in the cache
CPU_WHEEL = "make lab TORCH_INDEX=https://download.pytorch.org/whl/cpu (after rm -rf .venv)"


@dataclass
class Facts:
    """What ``gather`` found on this machine (tests make these up)."""

    python: tuple[int, int, int]
    cores: int
    ram_available: float | None          # bytes, None where unknown
    disk_free: float | None              # bytes, on the folder the course runs in
    torch_version: str | None            # None: torch is not installed in this Python
    torch_cuda: str | None = None        # torch.version.cuda: None for a CPU build
    torch_size: float | None = None      # bytes on disk: torch and, for CUDA builds, nvidia-* packages
    gpu: bool = False                    # an NVIDIA GPU is present
    models: dict[str, bool] = field(default_factory=dict)
    kernel_ok: bool = False
    kernel_detail: str = ""
    step_ms: float | None = None         # the calibration benchmark here
    reference_ms: float | None = None    # ... on the machine of the README table
    reference_machine: str = ""
    course_s: float | None = None        # the README table's chapter runtimes, summed
    ram_needed: float = RAM_FALLBACK     # the README table's largest peak memory, if measured
    in_venv: bool = True


@dataclass
class Line:
    name: str
    status: str        # "ok", "warn" (works, slower or larger than it should be) or "FIX"
    detail: str
    fix: str = ""


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 100 else f"{seconds / 60:.0f} min"


def judge(f: Facts) -> list[Line]:
    """The report for facts ``f``: one line per check."""
    lines = []
    py = ".".join(map(str, f.python))
    lines.append(Line("python", "ok", py) if f.python >= (3, 10) else
                 Line("python", "FIX", f"{py}: the course needs 3.10 or newer",
                      "install Python 3.10+ and run: make lab PYTHON=python3.12"))
    if f.cores >= 2:
        lines.append(Line("cores", "ok", f"{f.cores} usable"))
    else:
        lines.append(Line("cores", "warn", "1 usable core: every chapter takes about twice as long",
                          "close other programs; in a container or VM, give it 2 cores or more"))
    need = (f"the chapters with SmolLM2 need about {gb(f.ram_needed)}" if f.ram_needed == RAM_FALLBACK else
            f"the largest chapter peaked at {gb(f.ram_needed)}")
    if f.ram_available is None:
        lines.append(Line("free RAM", "warn", "unknown on this system", f"make sure {gb(f.ram_needed)} is free"))
    elif f.ram_available >= f.ram_needed:
        lines.append(Line("free RAM", "ok", f"{gb(f.ram_available)} available ({need})"))
    else:
        lines.append(Line("free RAM", "FIX", f"{gb(f.ram_available)} available, less than {need}",
                          "close the browser tabs and programs you do not need; run one "
                          "notebook at a time (Kernel > Shut Down All Kernels); docs/instructor.md: 4 GB laptops"))
    needed = DISK_NEEDED + MODELS_SIZE * (not all(f.models.values()) if f.models else 1)
    if f.disk_free is None:
        lines.append(Line("free disk", "warn", "unknown", f"make sure {gb(needed)} is free"))
    elif f.disk_free >= needed:
        lines.append(Line("free disk", "ok", f"{gb(f.disk_free)} free"))
    else:
        lines.append(Line("free disk", "FIX", f"{gb(f.disk_free)} free, the course needs {gb(needed)}",
                          "free some space (pip's cache: pip cache purge)"))
    lines.append(torch_line(f))
    for name in MODELS:
        if f.models.get(name):
            lines.append(Line(f"model {name}", "ok", "cached"))
        else:
            lines.append(Line(f"model {name}", "FIX", "not cached",
                              "make assets (online, once), or offline from the kit: make lab KIT=/path/to/kit"))
    lines.append(Line("jupyter kernel", "ok" if f.kernel_ok else "FIX", f.kernel_detail,
                      "" if f.kernel_ok else "make lab (it installs the course and its kernel into .venv)"))
    lines.append(runtime_line(f))
    return lines


def torch_line(f: Facts) -> Line:
    if f.torch_version is None:
        where = "this Python" if f.in_venv else "this Python (no .venv yet)"
        return Line("torch", "FIX", f"not installed in {where}", "make lab")
    build = f"CUDA {f.torch_cuda} build" if f.torch_cuda else "CPU build"
    size = f", {gb(f.torch_size)} on disk" if f.torch_size else ""
    detail = f"{f.torch_version}, {build}{size}"
    if f.torch_version.split("+")[0] != TORCH_PIN:
        return Line("torch", "FIX", f"{detail}; the course is pinned to {TORCH_PIN}", "make lab (after rm -rf .venv)")
    if f.torch_cuda and not f.gpu:
        return Line("torch", "warn", f"{detail}, and no NVIDIA GPU here: the CPU wheel is ~0.2 GB and computes "
                    "the same", CPU_WHEEL)
    return Line("torch", "ok", detail)


def runtime_line(f: Facts) -> Line:
    if f.step_ms is None:
        return Line("course runtime", "warn", "not estimated (torch is needed for the benchmark)", "make lab")
    if f.reference_ms is None or f.course_s is None:
        return Line("course runtime", "warn", f"benchmark {f.step_ms:.0f} ms per step; no reference in README.md "
                    "to compare with", "make timings writes one beside the chapter table")
    ratio = f.step_ms / f.reference_ms
    est = f.course_s * ratio
    speed = f"{1 / ratio:.1f}x the speed of the README's machine" if ratio < 0.95 or ratio > 1.05 else \
        "the speed of the README's machine"
    detail = (f"about {duration(est)} for all chapters ({f.step_ms:.0f} ms per benchmark step, {speed}; "
              f"README: {duration(f.course_s)})")
    if ratio > 3:
        return Line("course runtime", "warn", detail, "close other programs and rerun make doctor; in a workshop "
                    "present the long chapters (05-08) from their stored outputs")
    return Line("course runtime", "ok", detail)


def print_report(lines: list[Line]) -> bool:
    width = max(len(x.name) for x in lines)
    for x in lines:
        print(f"[{x.status:<4}] {x.name:<{width}}  {x.detail}" + (f"  -> {x.fix}" if x.fix else ""), flush=True)
    bad = [x for x in lines if x.status == "FIX"]
    print(f"{len(bad)} to fix: do what each FIX line says, then run make doctor again." if bad else
          "Ready for the course.")
    return not bad


# ---------------------------------------------------------------- gathering facts on this machine

def readme_table(text: str) -> dict:
    """From README.md's chapter table: the summed chapter runtimes (s), the largest peak memory (bytes,
    None until measured) and the stored calibration (ms per step, and the machine it names)."""
    block = text[text.index(START):text.index(END) + len(END)]
    total, peaks = 0.0, []
    for m in re.finditer(r"^\| \d\d \|(?:[^|]*\|){2}([^|]*)\|([^|]*)\|", block, re.M):
        runtime, mem = m.group(1).strip(), m.group(2).strip()
        if r := re.fullmatch(r"([0-9.]+) (s|min)", runtime):
            total += float(r.group(1)) * (60 if r.group(2) == "min" else 1)
        if p := re.fullmatch(r"([0-9.]+) (MB|GB)", mem):
            peaks.append(float(p.group(1)) * (1e9 if p.group(2) == "GB" else 1e6))
    cal = CALIBRATION.search(block)
    return {"course_s": total or None, "peak": max(peaks, default=None),
            "reference_ms": float(cal.group(1)) if cal else None,
            "reference_machine": (cal.group(2) or "") if cal else ""}


def benchmark(seconds: float = 5.0) -> float:
    """Milliseconds per step of a fixed fp32 workload: one MiniLM-sized transformer layer (d=384, 6 heads,
    feed-forward 1536), forward and backward on 8 x 128 tokens. The fastest step of those that fit
    in ``seconds`` after a warm-up, so that a moment of other load counts as little as possible."""
    import torch

    g = torch.Generator().manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(384, 6, 1536, dropout=0.0, batch_first=True)
    x = torch.randn(8, 128, 384, generator=g)
    best, t_end = float("inf"), None
    for i in range(10_000):
        t = time.perf_counter()
        layer(x).square().mean().backward()
        dt = time.perf_counter() - t
        if i >= 2:  # the first steps allocate and warm the caches
            best = min(best, dt)
            t_end = t_end or t + seconds
            if t >= t_end:
                break
    return best * 1000


def _ram_available() -> float | None:
    try:
        m = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        return int(m.group(1)) * 1024 if m else None
    except OSError:
        pass
    try:
        import psutil  # macOS and Windows, where Jupyter's dependencies bring it

        return float(psutil.virtual_memory().available)
    except ImportError:
        return None


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _kernel_check(timeout: float = 120) -> tuple[bool, str]:
    """Start the `python3` Jupyter kernel (as JupyterLab would, in notebooks/) and import minilora there."""
    try:
        from jupyter_client.manager import start_new_kernel
    except ImportError:
        return False, "jupyter is not installed in this Python"
    t = time.perf_counter()
    log = tempfile.TemporaryFile("w+")  # the kernel's own messages: shown only if it fails to start
    try:
        km, kc = start_new_kernel(kernel_name="python3", cwd=str(ROOT / "notebooks"), startup_timeout=timeout,
                                  stdout=log, stderr=log)
    except Exception as e:  # noqa: BLE001  (a missing kernel spec, a kernel that dies at start, ...)
        log.seek(0)
        said = log.read().strip().splitlines()[-1:] or [f"{type(e).__name__}: {str(e)[:120]}"]
        return False, f"the python3 kernel did not start: {said[0]}"
    out: list[str] = []
    try:
        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

        kc.execute_interactive("import minilora; print(minilora.__file__)", timeout=timeout, output_hook=hook)
    except Exception as e:  # noqa: BLE001
        out.append(f"{type(e).__name__}: {e}")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    seconds = time.perf_counter() - t
    text = "".join(out).strip()
    if text.endswith(".py") and Path(text).resolve().is_relative_to(ROOT / "minilora"):
        return True, f"python3 starts in {seconds:.1f} s and imports minilora from this folder"
    if text.endswith(".py"):
        return False, f"the python3 kernel imports another minilora ({text}): it is not this project's Python"
    return False, f"the python3 kernel cannot import minilora ({text[-160:] or 'no answer'})"


def gather(calibrate: float = 5.0) -> Facts:
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        cores = os.cpu_count() or 1
    cache = Path(os.environ.get("MINILORA_CACHE", "~/.cache/minilora")).expanduser()
    facts = Facts(
        python=tuple(sys.version_info[:3]), cores=cores, ram_available=_ram_available(),
        disk_free=float(shutil.disk_usage(ROOT).free),
        torch_version=None, gpu=shutil.which("nvidia-smi") is not None,
        models={name: (cache / name / "model.safetensors").exists() for name in MODELS},
        in_venv=sys.prefix != sys.base_prefix,
    )
    if README.exists():
        table = readme_table(README.read_text())
        facts.course_s, facts.reference_ms = table["course_s"], table["reference_ms"]
        facts.reference_machine = table["reference_machine"]
        facts.ram_needed = table["peak"] or RAM_FALLBACK
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        facts.torch_version, facts.torch_cuda = torch.__version__, torch.version.cuda
        site = Path(torch.__file__).parent.parent
        facts.torch_size = float(_tree_size(Path(torch.__file__).parent)
                                 + (_tree_size(site / "nvidia") if (site / "nvidia").is_dir() else 0))
    facts.kernel_ok, facts.kernel_detail = _kernel_check()
    if torch is not None:
        facts.step_ms = benchmark(calibrate)
    return facts


def main() -> None:
    ok = print_report(judge(gather()))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
