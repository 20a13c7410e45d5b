"""tools/run_notebooks.py: the runtime and peak-memory measurement behind the README's chapter table
(`make notebooks`, `make timings`), on tiny notebooks written here rather than the real chapters."""
import os
import pathlib
import sys

import nbformat
import pytest

from tools import doctor, run_notebooks

LINUX = sys.platform.startswith("linux")
README = """# course

<!-- runtimes:start -->
| # | chapter | you build (in minilora) | runtime | peak memory | solutions |
|---|---|---|---|---|---|
| 00 | Welcome | `env.check_environment` | 11 s | – | 12 s |
| 01 | Why low rank? Rank, SVD, and the ΔW | `plots.singular_values` | 23 s | – | 12 s |
<!-- runtimes:end -->

Text after the table.
"""


def tiny_notebook(path: pathlib.Path, *sources: str) -> pathlib.Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 00 Tiny\n\n**Runtime:** 5 s on a 2-core CPU.")]
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("n, text", [(None, "–"), (5_300_000, "5.3 MB"), (87_000_000, "87 MB"),
                                     (412_400_000, "412 MB"), (1_460_000_000, "1.5 GB"), (3_000_000_000, "3.0 GB")])
def test_fmt_bytes(n, text):
    assert run_notebooks.fmt_bytes(n) == text


@pytest.mark.skipif(not LINUX, reason="VmHWM is read from /proc, which only Linux has")
def test_peak_rss_reads_this_process_and_none_for_a_missing_one():
    import resource

    mine = run_notebooks.peak_rss(os.getpid())
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    assert mine is not None and abs(mine - maxrss) <= 0.05 * maxrss + (4 << 20)
    assert run_notebooks.peak_rss(None) is None
    assert run_notebooks.peak_rss(2**22 + 12345) is None  # above Linux's largest pid


def test_update_table_writes_the_three_measured_columns_of_the_named_rows_only():
    out = run_notebooks.update_table(README, {"01": (130.0, 1_460_000_000, 9.0)})
    rows = {line[2:4]: line for line in out.splitlines() if line.startswith("| 0")}
    assert rows["01"] == ("| 01 | Why low rank? Rank, SVD, and the ΔW | `plots.singular_values` "
                          "| 2.2 min | 1.5 GB | 9 s |")
    assert rows["00"] == "| 00 | Welcome | `env.check_environment` | 11 s | – | 12 s |"
    changed = [(a, b) for a, b in zip(README.splitlines(), out.splitlines()) if a != b]
    assert len(changed) == 1 and changed[0][1] == rows["01"]
    assert len(out.splitlines()) == len(README.splitlines()) and out.endswith("Text after the table.\n")


def test_update_table_writes_a_dash_where_memory_could_not_be_read():
    out = run_notebooks.update_table(README, {"00": (11.0, None, 12.0)})
    assert "| `env.check_environment` | 11 s | – | 12 s |" in out


@pytest.mark.skipif(not LINUX, reason="peak memory is measured on Linux only")
def test_execute_measures_the_kernels_peak_memory_not_its_current(tmp_path):
    """A cell that holds 300 MB and frees it: the peak still counts it; a notebook without it stays lower."""
    big = tiny_notebook(tmp_path / "00_big.ipynb", "import numpy as np\nx = np.ones(300_000_000 // 8)",
                        "del x", "print('done')")
    small = tiny_notebook(tmp_path / "00_small.ipynb", "import numpy as np", "print('done')")
    seconds, peak_big = run_notebooks.execute(big, store=False)
    _, peak_small = run_notebooks.execute(small, store=False)
    assert seconds > 0
    assert peak_small is not None and peak_big is not None
    assert peak_big - peak_small > 250e6, (peak_big, peak_small)
    assert peak_small < 400e6
    assert nbformat.read(big, as_version=4).cells[1].outputs == []  # store=False leaves the file as it was


def test_execute_stores_tidied_outputs_in_place(tmp_path):
    nb = tiny_notebook(tmp_path / "00_t.ipynb", "print('a')\nprint('b')",
                       "import sys\n_ = sys.stderr.write('10%\\r100%\\n')")
    run_notebooks.execute(nb, store=True)
    cells = [c for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code"]
    assert [o["text"] for o in cells[0].outputs] == ["a\nb\n"]
    assert [o["text"] for o in cells[1].outputs] == ["100%\n"]
    assert [c.execution_count for c in cells] == [1, 2]


def test_write_runtimes_updates_readme_and_title_cell(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "README.md").write_text(README)
    nb = tiny_notebook(tmp_path / "notebooks" / "00_welcome.ipynb", "1")
    run_notebooks.write_runtimes({"00": (42.0, 612_000_000, 7.0)}, root=tmp_path)
    assert "| `env.check_environment` | 42 s | 612 MB | 7 s |" in (tmp_path / "README.md").read_text()
    assert "**Runtime:** 42 s on a 2-core CPU." in nbformat.read(nb, as_version=4).cells[0].source


def test_update_table_replaces_the_calibration_line_that_make_doctor_reads():
    once = run_notebooks.update_table(README, {}, run_notebooks.calibration_comment(80.04))
    twice = run_notebooks.update_table(once, {}, run_notebooks.calibration_comment(61.0))
    assert twice.count("<!-- calibration:") == 1
    assert doctor.readme_table(twice)["reference_ms"] == 61.0
    assert run_notebooks.update_table(twice, {"00": (1.0, None, 1.0)}).count("61.0 ms per step") == 1
