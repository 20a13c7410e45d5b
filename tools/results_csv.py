"""Writing a results file of a sweep: a comment naming the command, then CSV rows; atomically."""
from __future__ import annotations

import csv
import io
import os
import pathlib
import tempfile


def write_results(path: pathlib.Path, command: str, fields: list[str], rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` as CSV under a first line ``# written by: <command>``, via a
    temporary file and a rename, so that an interrupted sweep never leaves half a file."""
    text = io.StringIO()
    text.write(f"# written by: {command}\n")
    writer = csv.DictWriter(text, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text.getvalue())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's file is private (0600); results are an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
