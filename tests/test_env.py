"""minilora.course.env: seeding is reproducible, and the set-up check names each problem with its fix."""
import random
import re

import numpy as np
import pytest
import torch

from minilora import utils
from minilora.course import env


def draw():
    return (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(),
            torch.nn.Linear(4, 2).weight.detach().flatten().tolist())


def test_seed_everything_makes_random_numpy_and_torch_reproducible():
    utils.seed_everything(3)
    first = draw()
    utils.seed_everything(3)
    assert draw() == first
    utils.seed_everything(4)
    other = draw()
    for a, b in zip(first, other):  # every generator is seeded, not just one of them
        assert a != b


@pytest.mark.parametrize("bad, error", [(1.5, TypeError), ("0", TypeError), (None, TypeError), (True, TypeError),
                                        (-1, ValueError), (2**32, ValueError)])
def test_seed_everything_rejects_a_bad_seed(bad, error):
    with pytest.raises(error, match="seed_everything"):
        utils.seed_everything(bad)


def by_name(checks):
    return {c.name: c for c in checks}


def test_check_environment_returns_checks_for_python_packages_threads_and_models():
    checks = env.check_environment()
    assert checks and all(isinstance(c, env.Check) for c in checks)
    names = by_name(checks)
    for name in ["python", "cpu threads", "model all-MiniLM-L6-v2", "model SmolLM2-135M-Instruct",
                 *env.EXPECTED]:
        assert name in names, name
    assert all(isinstance(c.detail, str) and c.detail for c in checks)
    assert all(c.fix for c in checks if not c.ok), "every problem must say how to fix it"


def test_a_missing_model_is_reported_with_the_make_assets_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINILORA_CACHE", str(tmp_path / "empty"))
    checks = by_name(env.check_environment())
    for name in ["model all-MiniLM-L6-v2", "model SmolLM2-135M-Instruct"]:
        assert not checks[name].ok
        assert checks[name].detail == "not cached"
        assert "make assets" in checks[name].fix
    assert env.print_environment(list(checks.values())) is False
    out = capsys.readouterr().out
    assert "[FIX] model all-MiniLM-L6-v2" in out and "make assets" in out
    assert "problems: do what each FIX line says" in out


def test_a_wrong_or_missing_package_version_is_reported(monkeypatch):
    monkeypatch.setitem(env.EXPECTED, "numpy", "0.0.1")
    monkeypatch.setitem(env.EXPECTED, "no-such-package-minilora", "1.0")
    checks = by_name(env.check_environment())
    assert not checks["numpy"].ok and "numpy==0.0.1" in checks["numpy"].fix
    assert not checks["no-such-package-minilora"].ok
    assert checks["no-such-package-minilora"].detail == "missing"


def test_more_threads_than_cores_is_reported(monkeypatch):
    cores = env._usable_cores()
    monkeypatch.setattr(env.torch, "get_num_threads", lambda: cores + 1)
    check = by_name(env.check_environment())["cpu threads"]
    assert not check.ok and "OMP_NUM_THREADS" in check.fix


def test_one_thread_on_several_cores_works_but_says_so(monkeypatch):
    monkeypatch.setattr(env, "_usable_cores", lambda: 4)
    monkeypatch.setattr(env.torch, "get_num_threads", lambda: 1)
    check = by_name(env.check_environment())["cpu threads"]
    assert check.ok and "OMP_NUM_THREADS=1" in check.detail


def test_print_environment_is_true_only_when_all_is_fine(capsys):
    good = [env.Check("a", True, "fine"), env.Check("b", True, "fine too")]
    assert env.print_environment(good) is True
    assert "Everything is ready." in capsys.readouterr().out
    assert env.print_environment(good + [env.Check("c", False, "broken", "do this")]) is False
    out = capsys.readouterr().out
    assert "[FIX] c  broken  -> do this" in out and "1 problem:" in out


@pytest.mark.parametrize("capability, avx512_bf16, amx, isa, native", [
    ("AVX512", True, False, "", True),       # e.g. Cooper Lake, Zen 4: AVX512-BF16
    ("AVX512", False, True, "", True),       # Sapphire Rapids and later: AMX
    ("AVX512", False, False, "", False),     # Skylake-X: AVX-512 without bf16 instructions
    ("AVX2", False, False, "", False),       # a typical laptop, or AMD EPYC Zen 3
    ("AVX2", True, True, "", False),         # ATEN_CPU_CAPABILITY=avx2 on a bf16 machine: emulated
    ("AVX512", True, True, "AVX2", False),   # ONEDNN_MAX_CPU_ISA=AVX2 on a bf16 machine: emulated
    ("AVX512", True, True, "avx512_core_amx", True),
    ("DEFAULT", False, False, "", False),    # an unrecognised CPU counts as emulated
])
def test_bf16_is_native_follows_the_cpu_capability(monkeypatch, capability, avx512_bf16, amx, isa, native):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert env.bf16_is_native() is native
    assert ("native" in by_name(env.check_environment())["bf16"].detail) is native


def test_the_pins_come_from_pyproject_or_else_from_the_installed_metadata(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "minilora"\ndependencies = [\n    "torch==9.9.9",\n    "tqdm==1.0",\n]\n'
                         '[project.optional-dependencies]\ndev = [\n    "pytest==1.2.3",\n]\n')
    assert env._pinned(pyproject) == {"torch": "9.9.9", "tqdm": "1.0"}  # the runtime pins only, not dev's
    installed = env._pinned(tmp_path / "no-pyproject-here.toml")
    assert set(installed) == set(env.EXPECTED) and "pytest" not in installed
    assert all(re.fullmatch(r"[0-9][0-9a-z.+]*", v) for v in installed.values()), installed
