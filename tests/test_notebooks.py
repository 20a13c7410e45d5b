"""The committed notebooks as readers see them (on GitHub, or opened without running them): executed in
order, clean stored outputs, and the same runtimes in each title cell as in the README."""
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
CHAPTERS = [p for p in NOTEBOOKS if p.parent.name == "notebooks"]
MACHINE_PATH = re.compile(r"(/root/|/home/[\w.-]+|/Users/[\w.-]+|/tmp/|/var/folders/|site-packages|\.venv/"
                          r"|[A-Za-z]:\\\\Users\\\\)")


def cells(path):
    return json.loads(path.read_text())["cells"]


def output_text(out) -> str:
    text = out.get("text", "")
    text = "".join(text) if isinstance(text, list) else text
    for kind, value in out.get("data", {}).items():
        if kind.startswith("text/"):
            text += "".join(value) if isinstance(value, list) else value
    if out.get("output_type") == "error":
        text += "".join(out.get("traceback", []))
    return text


def test_outputs_are_fresh_and_in_order():
    for nb in NOTEBOOKS:
        code = [c for c in cells(nb) if c["cell_type"] == "code" and "".join(c["source"]).strip()]
        counts = [c["execution_count"] for c in code]
        assert counts == list(range(1, len(code) + 1)), f"{nb.name}: execute it top to bottom before committing"
        for c in code:
            assert not "".join(c["source"]).rstrip().endswith(";"), f"{nb.name}: a cell ends with ';'"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT / "notebooks")))
def test_stored_outputs_are_clean(nb):
    """No machine paths, no ANSI escape codes, no tracebacks, at most one stderr block per cell."""
    problems = []
    for i, cell in enumerate(c for c in cells(nb) if c["cell_type"] == "code"):
        outs = cell.get("outputs", [])
        for out in outs:
            text = output_text(out)
            if m := MACHINE_PATH.search(text):
                problems.append(f"code cell {i}: a machine path ({m.group(0)!r}) in {text[:80]!r}")
            if "\x1b[" in text:
                problems.append(f"code cell {i}: ANSI escape codes")
            if out.get("output_type") == "error" or "Traceback (most recent call last)" in text:
                problems.append(f"code cell {i}: a traceback")
        n_stderr = sum(o.get("output_type") == "stream" and o.get("name") == "stderr" for o in outs)
        if n_stderr > 1:
            problems.append(f"code cell {i}: {n_stderr} stderr outputs (progress-bar redraws?)")
    assert not problems, f"{nb.name}:\n" + "\n".join(problems)


CONTROL_IN_MATH = re.compile(r"\$[^$]*[\t\x07\x08\x0b\x0c\r][^$]*\$")


def broken_maths(source: str) -> list[str]:
    """The $...$ spans of a markdown cell that hold a control character: a Python escape that ate a LaTeX
    command when the cell was written from a string (\\t of \\times became a TAB, \\b of \\beta a backspace)."""
    return [m.group(0) for m in CONTROL_IN_MATH.finditer(source)]


def test_broken_maths_is_found():
    assert broken_maths(r"a $0.2 \times 0.2$ b, $\beta$") == []  # intact LaTeX
    assert broken_maths("a $0.2 \times 0.2$ b") == ["$0.2 \times 0.2$"]  # "\t" of "\times" became a TAB
    assert broken_maths("$\beta$ and $x$") == ["$\beta$"]  # "\b" of "\beta" became a backspace


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: str(p.relative_to(ROOT / "notebooks")))
def test_markdown_maths_has_no_control_characters(nb):
    problems = [f"markdown cell {i}: {span!r}" for i, cell in enumerate(cells(nb)) if cell["cell_type"] == "markdown"
                for span in broken_maths("".join(cell["source"]))]
    assert not problems, f"{nb.name}:\n" + "\n".join(problems)


def test_title_cell_runtimes_equal_the_readme_table():
    """`make timings` writes both; this keeps them from drifting apart."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("<!-- runtimes:start -->"):readme.index("<!-- runtimes:end -->")]
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| (\d\d) \|(?:[^|]*\|){2}([^|]*)\|", table, re.M)}
    assert len(rows) == len(CHAPTERS)
    for nb in CHAPTERS:
        title = "".join(cells(nb)[0]["source"])
        m = re.search(r"\*\*Runtime:\*\* ([^*\n]*?) on a 2-core CPU", title)
        assert m, f"{nb.name}: the title cell has no '**Runtime:** ... on a 2-core CPU' line"
        assert m.group(1) == rows[nb.name[:2]], f"{nb.name}: title says {m.group(1)!r}, README {rows[nb.name[:2]]!r}"


def test_readme_table_has_a_peak_memory_column_beside_the_runtime():
    """`make notebooks` writes each chapter's peak memory there ("–" until it has been measured)."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("<!-- runtimes:start -->"):readme.index("<!-- runtimes:end -->")]
    header = next(line for line in table.splitlines() if line.startswith("| # |"))
    assert [c.strip() for c in header.split("|")[4:7]] == ["runtime", "peak memory", "solutions"]
    for m in re.finditer(r"^\| (\d\d) \|(?:[^|]*\|){3}([^|]*)\|", table, re.M):
        assert re.fullmatch(r"–|\d+(\.\d+)? (MB|GB)", m.group(2).strip()), f"chapter {m.group(1)}: {m.group(2)!r}"
