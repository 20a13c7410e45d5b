"""docs/errors.md is current: every row's example, run again, raises the error and the message the table shows."""
import pathlib

import pytest

from tools import errors_doc

ROOT = pathlib.Path(__file__).resolve().parents[1]

ROWS = [line for line in (ROOT / "docs" / "errors.md").read_text().splitlines() if line.startswith("| ") and
        line.split("|")[1].strip().isdigit()]


def test_the_table_has_at_least_30_rows_one_per_case():
    assert len(ROWS) >= 30
    assert len(ROWS) == len(errors_doc.CASES)


@pytest.mark.parametrize("i", range(len(errors_doc.CASES)))
def test_each_row_raises_what_the_table_says(i):
    case = errors_doc.CASES[i]
    error, message = errors_doc.run_case(case)
    cells = [c.strip() for c in ROWS[i].split(" | ")]
    assert cells[3] == f"`{error}`", f"row {i + 1}: {case.example} now raises {error}"
    assert cells[4] == errors_doc._cell(message), f"row {i + 1}: the message changed; run python tools/errors_doc.py"
    assert error in ("TypeError", "ValueError", "UnknownAdapterError", "AdapterFileError"), \
        f"row {i + 1}: {error} is outside the library's error vocabulary"
