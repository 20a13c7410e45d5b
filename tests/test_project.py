"""The set-up files agree with each other, so neither install route can drift; the pins are written once;
make help is complete; tools/ is a package; the licence."""
import importlib
import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from tools import doctor

ROOT = pathlib.Path(__file__).resolve().parents[1]


def pyproject_requirements() -> set[str]:
    """The quoted strings of the ``dependencies`` and ``dev`` arrays (tomllib needs Python 3.11)."""
    text = (ROOT / "pyproject.toml").read_text()
    reqs = set()
    for array in ("dependencies", "dev"):
        body = re.search(rf"^{array} = \[(.*?)^\]", text, re.S | re.M)
        assert body, f"pyproject.toml has no {array} array"
        reqs |= set(re.findall(r'"([^"]+)"', body.group(1)))
    return reqs


def environment_requirements() -> set[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = lines.index("  - pip:")
    reqs = set()
    for line in lines[start + 1:]:
        m = re.match(r"^    - (\S.*)$", line)
        if m and not m.group(1).startswith(("-e", "--")):
            reqs.add(m.group(1).strip())
    return reqs


def test_environment_yml_names_the_same_pinned_dependencies_as_pyproject():
    py, env = pyproject_requirements(), environment_requirements()
    assert py == env, f"only in pyproject: {sorted(py - env)}; only in environment.yml: {sorted(env - py)}"
    assert all("==" in r for r in py), "every dependency is pinned, so a classroom gets the same numbers"


def test_environment_yml_installs_the_project_with_dev_extras():
    assert "    - -e .[dev]" in (ROOT / "environment.yml").read_text().splitlines()


def test_env_check_expects_the_pinned_versions():
    from minilora.course.env import EXPECTED

    pins = dict(r.split("==") for r in pyproject_requirements())
    for pkg, version in EXPECTED.items():
        assert pins[pkg] == version, pkg


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / "README.md").read_text()
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.M)


# ----- one source for the pins: pyproject.toml ------------------------------------------------------
def torch_pin() -> str:
    pins = dict(r.split("==") for r in pyproject_requirements())
    return pins["torch"]


def repository_files() -> list[pathlib.Path]:
    """The files git tracks or would track (not .venv, not ignored build output)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout of the course")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         check=True, capture_output=True).stdout.decode()
    return [ROOT / name for name in out.split("\0") if name and (ROOT / name).is_file()]


# Where the torch version may appear besides pyproject.toml, and why.
PIN_ALLOWED = {
    "environment.yml": "conda cannot read pyproject.toml; the test above checks that the two agree",
    "benchmarks/README.md": "a record of the machine and versions one measurement ran on",
}


def test_the_torch_pin_is_written_once():
    """Everything else derives the version from pyproject.toml; a second hard-coded copy would drift."""
    pin = torch_pin()
    pattern = re.compile(rf"(?<![\w.]){re.escape(pin)}(?![\w.])")
    copies = []
    for path in repository_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel == "pyproject.toml" or rel in PIN_ALLOWED:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images, fonts
        if path.suffix == ".ipynb":  # a notebook's outputs record the machine it ran on; its code is checked
            text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
        copies += [f"{rel}:{text.count(chr(10), 0, m.start()) + 1}" for m in pattern.finditer(text)]
    assert not copies, (f"torch {pin} is written outside pyproject.toml at {copies}: derive it from there "
                        "(Makefile: TORCH_PIN; Python: minilora.course.env.EXPECTED or tools.doctor.TORCH_PIN)")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_the_makefile_and_the_doctor_read_the_torch_pin_from_pyproject():
    made = subprocess.run(["make", "-s", "--no-print-directory", "--eval", "_pin: ; @echo $(TORCH_PIN)", "_pin"],
                          cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    assert made == f"torch=={torch_pin()}"
    assert doctor.TORCH_PIN == torch_pin()


# ----- make help ------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_help_lists_every_phony_target():
    makefile = (ROOT / "Makefile").read_text()
    phony = {t for line in re.findall(r"^\.PHONY:(.*)$", makefile, re.M) for t in line.split()}
    assert {"help", "lab", "test", "doctor", "clean"} <= phony
    out = subprocess.run(["make", "-s", "--no-print-directory", "help"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    listed = dict(re.findall(r"^make (\S+) +(\S.*)$", out, re.M))
    assert set(listed) == phony, f"not in make help: {sorted(phony - set(listed))}; not .PHONY: " \
                                 f"{sorted(set(listed) - phony)}"
    assert out.splitlines()[:3] == [line for line in out.splitlines() if re.match(r"make (help|lab|test) ", line)]


# ----- tools/: a package, and scripts, with no sys.path edits ----------------------------------------
TOOLS = sorted(p.stem for p in (ROOT / "tools").glob("*.py") if p.stem != "__init__")


def test_nothing_edits_sys_path():
    files = [*(ROOT / "tools").glob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
             *(ROOT / "minilora").rglob("*.py")]
    edits = [f"{p.relative_to(ROOT)}:{n}" for p in files
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"sys\.path\.(insert|append|extend)|sys\.path\s*(\[|\+?=)", line)
             and p.name != "test_project.py"]  # its script check below sets sys.path in a child process
    assert not edits, f"minilora comes from pip install -e ., tools from the tools package: {edits}"


@pytest.mark.parametrize("name", TOOLS)
def test_every_tool_imports_as_a_module_of_the_tools_package(name):
    module = importlib.import_module(f"tools.{name}")
    assert pathlib.Path(module.__file__) == ROOT / "tools" / f"{name}.py"


def test_the_tools_that_use_a_sibling_also_load_as_scripts():
    """``python tools/x.py`` (the commands results/*.csv name): Python puts tools/ first on sys.path and
    sets no package; each script is loaded that way here, without running its main()."""
    scripts = [f"tools/{name}.py" for name in TOOLS if "if __package__:" in (ROOT / "tools" / f"{name}.py").read_text()]
    assert len(scripts) >= 7  # make_sentiment_data, run_notebooks, the five sweeps
    code = ("import runpy, sys\nsys.path.insert(0, 'tools')  # what `python tools/x.py` does\n"
            "for path in sys.argv[1:]:\n    assert not runpy.run_path(path)['__package__'], path\nprint('loaded')")
    proc = subprocess.run([sys.executable, "-c", code, *scripts], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "loaded" in proc.stdout, proc.stderr[-2000:]


# ----- the licence ---------------------------------------------------------------------------------
def test_the_licence_is_apache_2_and_pyproject_names_it():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("Copyright ") and "The minilora authors" in text.splitlines()[0]
    for part in ("Apache License\n                           Version 2.0, January 2004",
                 "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
                 "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS",
                 "APPENDIX: How to apply the Apache License to your work.",
                 "limitations under the License."):
        assert part in text, part
    assert len(text.split()) > 1500  # the whole text, not a summary
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^license = "Apache-2.0"$', pyproject, re.M)
    assert re.search(r'^license-files = \["LICENSE"\]$', pyproject, re.M)
    assert "CC0-1.0" in (ROOT / "data" / "README.md").read_text()  # the data keeps its own licence
