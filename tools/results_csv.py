"""A sweep's results file: a comment naming the command, then CSV rows; written atomically, read back."""
from __future__ import annotations

import csv
import io
import pathlib

from minilora.files import write_atomic


def write_results(path: pathlib.Path, command: str, fields: list[str], rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` as CSV under a first line ``# written by: <command>``, via a
    temporary file and a rename, so that an interrupted sweep never leaves half a file."""
    text = io.StringIO()
    text.write(f"# written by: {command}\n")
    writer = csv.DictWriter(text, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def read_results(path: pathlib.Path) -> list[dict]:
    """The rows of a results file, without its ``# written by:`` comment line."""
    return list(csv.DictReader(line for line in path.read_text().splitlines() if not line.startswith("#")))
