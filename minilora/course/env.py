"""The environment check of chapter 00.  (Chapter 00)

``check_environment()`` looks at what the course needs
(Python and package versions, CPU threads, the cached models) and says how to fix each problem.
"""
from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from . import models

__all__ = ["EXPECTED", "BF16_ISAS", "Check", "bf16_is_native", "check_environment",
           "print_environment"]


def _pinned(pyproject: Path = Path(__file__).resolve().parents[2] / "pyproject.toml") -> dict[str, str]:
    """``{package: version}`` of the ``name==version`` dependencies in pyproject.toml, the one place they
    are written: the checkout's file when minilora runs from one (``make lab`` installs it editable, so a
    pulled change of pins shows up here before the reinstall), else the installed package's metadata."""
    text = pyproject.read_text(encoding="utf-8") if pyproject.is_file() else ""
    if 'name = "minilora"' in text:  # a regular expression, not tomllib: Python 3.10 has no tomllib
        array = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
        requirements = re.findall(r'"([^"]+)"', array.group(1)) if array else []
    else:
        requirements = [r.split(";")[0] for r in metadata.requires("minilora") or [] if "extra ==" not in r]
    return dict(r.replace(" ", "").split("==", 1) for r in requirements if "==" in r)


#: The versions the course is pinned to (pyproject.toml); others may work but give other numbers.
EXPECTED = _pinned()


@dataclass
class Check:
    """One line of the environment report: what was checked, whether it is fine, how to fix it."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _usable_cores() -> int:
    """Cores this process may run on (the affinity mask in containers), else all cores."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


#: oneDNN ISA limits (``ONEDNN_MAX_CPU_ISA``) under which bf16 matrix products still run in hardware.
BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
             "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT")


def bf16_is_native() -> bool:
    """True when this CPU multiplies bfloat16 matrices in hardware (x86 with AVX512-BF16 or AMX, and
    neither oneDNN nor ATen told to use less: ``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``).

    Elsewhere (AVX2 laptops, most CPUs before 2020) bf16 is emulated in software, often 10x slower
    than fp32, so the course runs its bf16 demonstrations in short (chapter 08). A CPU this function
    does not recognise counts as emulated: the short version is the safe one."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if isa and isa not in BF16_ISAS:
        return False
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_BF16", "AMX"):  # ATen's kernels
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def check_environment() -> list[Check]:
    """Check Python, the pinned packages, CPU threads and the cached models."""
    checks = [Check("python", sys.version_info >= (3, 10), platform.python_version(),
                    "install Python 3.10 or newer")]
    for pkg, want in EXPECTED.items():
        have = _version(pkg)
        base = (have or "").split("+")[0]
        checks.append(Check(pkg, base == want, have or "missing",
                            f"run `make lab` (or pip install -e '.[dev]') to get {pkg}=={want}"))
    threads, cores = torch.get_num_threads(), _usable_cores()
    detail = f"torch uses {threads} of {cores} cores"
    if threads == 1 < cores:  # works, only slower; some clusters and containers set this on purpose
        detail += " (OMP_NUM_THREADS=1? unset it and restart the kernel for faster notebooks)"
    checks.append(Check("cpu threads", 1 <= threads <= cores, detail,
                        "more threads than cores slows everything down: unset OMP_NUM_THREADS, "
                        "or set it to your number of cores, and restart the kernel"))
    checks.append(Check("cuda", True, "available" if torch.cuda.is_available() else
                        "not needed: the whole course runs on the CPU"))
    checks.append(Check("bf16", True, "native: bf16 matrix products run in hardware" if bf16_is_native() else
                        "emulated on this CPU (fine: chapter 08 then runs its bf16 part in short)"))
    for name, path in models.cached_models().items():
        checks.append(Check(f"model {name}", path is not None, models.display_path(path) if path else "not cached",
                            "run `make assets` once while online"))
    return checks


def print_environment(checks: list[Check] | None = None) -> bool:
    """Print the report of ``check_environment()``; return True when everything is fine."""
    checks = check_environment() if checks is None else checks
    width = max(len(c.name) for c in checks)
    for c in checks:
        mark = "ok " if c.ok else "FIX"
        print(f"[{mark}] {c.name:<{width}}  {c.detail}" + ("" if c.ok else f"  -> {c.fix}"))
    bad = sum(not c.ok for c in checks)
    if bad:
        print(f"{bad} problem{'s' if bad > 1 else ''}: do what each FIX line says, then restart the kernel "
              "and run the notebook again.")
    else:
        print("Everything is ready.")
    return not bad
