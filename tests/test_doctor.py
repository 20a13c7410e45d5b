"""tools/doctor.py (make doctor): its judging on made-up facts, the README parsing, and one real gathering."""
import dataclasses
import pathlib

import pytest

from tools import doctor

ROOT = pathlib.Path(__file__).resolve().parents[1]
PIN = doctor.TORCH_PIN  # pyproject.toml's, read by the doctor

GOOD = doctor.Facts(
    python=(3, 11, 7), cores=4, ram_available=6e9, disk_free=20e9, torch_version=f"{PIN}+cpu",
    torch_cuda=None, torch_size=0.8e9, gpu=False,
    models={"all-MiniLM-L6-v2": True, "SmolLM2-135M-Instruct": True},
    kernel_ok=True, kernel_detail="python3 starts in 2.0 s and imports minilora from this folder",
    step_ms=50.0, reference_ms=100.0, reference_machine="x86_64", course_s=600.0,
)


def report(**changes):
    return {line.name: line for line in doctor.judge(dataclasses.replace(GOOD, **changes))}


def test_a_ready_laptop_gets_only_ok_lines_and_an_estimate():
    lines = report()
    assert [x.status for x in lines.values()] == ["ok"] * len(lines)
    assert list(lines) == ["python", "cores", "free RAM", "free disk", "torch", "model all-MiniLM-L6-v2",
                           "model SmolLM2-135M-Instruct", "jupyter kernel", "course runtime"]
    assert "about 5 min for all chapters" in lines["course runtime"].detail  # twice as fast: half of 10 min
    assert "2.0x the speed" in lines["course runtime"].detail
    assert "CPU build, 0.8 GB on disk" in lines["torch"].detail


def test_every_failing_line_names_its_fix():
    bad = dict(python=(3, 9, 1), ram_available=1e9, disk_free=0.2e9, torch_version="2.4.0", kernel_ok=False,
               kernel_detail="the python3 kernel cannot import minilora",
               models={"all-MiniLM-L6-v2": False, "SmolLM2-135M-Instruct": False})
    lines = report(**bad)
    fixes = {name: x for name, x in lines.items() if x.status == "FIX"}
    assert set(fixes) == {"python", "free RAM", "free disk", "torch", "model all-MiniLM-L6-v2",
                          "model SmolLM2-135M-Instruct", "jupyter kernel"}
    assert all(x.fix for x in fixes.values())
    assert "make lab PYTHON=" in fixes["python"].fix
    model_fix = fixes["model SmolLM2-135M-Instruct"].fix
    assert "make assets" in model_fix and "KIT=" in model_fix
    assert f"pinned to {PIN}" in fixes["torch"].detail


@pytest.mark.parametrize("ram, status", [(1.49e9, "FIX"), (1.5e9, "ok"), (None, "warn")])
def test_free_ram_against_the_fallback_need(ram, status):
    assert report(ram_available=ram)["free RAM"].status == status


def test_free_ram_against_the_largest_measured_peak():
    line = report(ram_available=2.0e9, ram_needed=2.5e9)["free RAM"]
    assert line.status == "FIX" and "peaked at 2.5 GB" in line.detail and "4 GB laptops" in line.fix


def test_disk_need_counts_the_models_while_they_are_missing():
    missing = {"all-MiniLM-L6-v2": False, "SmolLM2-135M-Instruct": True}
    assert report(disk_free=1.2e9)["free disk"].status == "ok"
    assert report(disk_free=1.2e9, models=missing)["free disk"].status == "FIX"


def test_one_core_is_a_warning_not_a_failure():
    assert report(cores=1)["cores"].status == "warn"


def test_cuda_torch_without_a_gpu_points_to_the_cpu_wheel():
    line = report(torch_version=f"{PIN}+cu128", torch_cuda="12.8", torch_size=4.3e9)["torch"]
    assert line.status == "warn" and "CUDA 12.8 build, 4.3 GB on disk" in line.detail
    assert "download.pytorch.org/whl/cpu" in line.fix
    assert report(torch_version=f"{PIN}+cu128", torch_cuda="12.8", gpu=True)["torch"].status == "ok"


def test_no_torch_yet_says_make_lab_and_skips_the_estimate():
    lines = report(torch_version=None, step_ms=None, in_venv=False)
    assert lines["torch"].status == "FIX" and lines["torch"].fix == "make lab" and "no .venv" in lines["torch"].detail
    assert lines["course runtime"].status == "warn" and "not estimated" in lines["course runtime"].detail


def test_runtime_estimate_scales_the_readme_total_and_warns_when_very_slow():
    same = report(step_ms=100.0)["course runtime"]
    assert same.status == "ok" and "about 10 min" in same.detail and "the speed of the README's machine" in same.detail
    slow = report(step_ms=400.0)["course runtime"]
    assert slow.status == "warn" and "about 40 min" in slow.detail and "stored outputs" in slow.fix
    assert report(reference_ms=None)["course runtime"].status == "warn"


def test_print_report_returns_false_and_counts_fixes(capsys):
    assert doctor.print_report(doctor.judge(GOOD))
    assert "Ready for the course." in capsys.readouterr().out
    assert not doctor.print_report(doctor.judge(dataclasses.replace(GOOD, kernel_ok=False)))
    out = capsys.readouterr().out
    assert "[FIX ] jupyter kernel" in out and "-> make lab" in out and "1 to fix" in out


def test_readme_table_parsing():
    text = """x
<!-- runtimes:start -->
| # | chapter | you build | runtime | peak memory | solutions |
|---|---|---|---|---|---|
| 00 | Welcome | `env` | 11 s | 310 MB | 12 s |
| 05 | Encoder, ranks 1–16 | `models` | 2.2 min | 1.4 GB | 14 s |
| 06 | Swap | `io` | 84 s | – | 12 s |
<!-- calibration: 97.5 ms per step, x86_64, 2 cores, CPU capability AVX2 -->
<!-- runtimes:end -->
"""
    t = doctor.readme_table(text)
    assert t["course_s"] == pytest.approx(11 + 132 + 84)
    assert t["peak"] == pytest.approx(1.4e9)
    assert t["reference_ms"] == 97.5 and "AVX2" in t["reference_machine"]
    t = doctor.readme_table(text.replace("1.4 GB", "–").replace("<!-- calibration", "<!-- other"))
    assert t["peak"] == pytest.approx(310e6) and t["reference_ms"] is None
    assert doctor.readme_table(text.replace("310 MB", "–").replace("1.4 GB", "–"))["peak"] is None


def test_the_real_readme_has_a_total_and_a_calibration():
    t = doctor.readme_table((ROOT / "README.md").read_text())
    assert t["course_s"] > 300 and t["reference_ms"] is not None


def test_model_folders_are_minilora_s():
    from minilora.course.models import CHAT_DIR, ENCODER_DIR

    assert doctor.MODELS == (ENCODER_DIR, CHAT_DIR)


def test_benchmark_returns_a_positive_time_within_its_budget():
    import time

    t = time.perf_counter()
    ms = doctor.benchmark(0.3)
    assert 0 < ms < 60_000 and time.perf_counter() - t < 120  # a busy machine is slow, never endless


def test_the_kernel_check_starts_a_kernel_that_imports_this_minilora():
    ok, detail = doctor._kernel_check(timeout=300)
    assert ok, detail
    assert "imports minilora from this folder" in detail
