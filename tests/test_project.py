"""The set-up files agree with each other, so neither install route can drift."""
import pathlib
import re

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
