"""Render the chapters, with their stored outputs, to a static HTML site (make site).

Nothing is executed: each notebook is converted as it is committed, its output images embedded
by nbconvert. The site gets an index of the chapters, previous / index / next links on every page,
and a copy of notebooks/figures/ so that the diagrams the markdown references resolve. It is built
in a temporary folder beside the target and then moved into place, so that a failed build leaves
the previous site untouched.

    python tools/make_site.py [OUT] [--solutions]
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CHAPTER = re.compile(r"^(\d\d)_.+\.ipynb$")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
BODY = re.compile(r"<body[^>]*>", re.IGNORECASE)

NAV_STYLE = """<style>
.minilora-nav { font-family: sans-serif; padding: 0.6em 1em; background: #f4f4f4;
  border-bottom: 1px solid #ddd; display: flex; gap: 1.5em; }
.minilora-nav.bottom { border-top: 1px solid #ddd; border-bottom: none; }
</style>"""


@dataclass
class Chapter:
    path: Path
    number: str
    title: str

    @property
    def page(self) -> str:
        return self.path.with_suffix(".html").name


def chapter_title(notebook: nbformat.NotebookNode, fallback: str) -> str:
    """The text of the first markdown heading, without its markdown emphasis and code marks."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            match = HEADING.search(cell.source)
            if match:
                return re.sub(r"[*_`]", "", match.group(1)).strip()
    return fallback


def find_chapters(folder: Path) -> list[Chapter]:
    chapters = []
    for path in sorted(folder.glob("*.ipynb")):
        match = CHAPTER.match(path.name)
        if match:
            notebook = nbformat.read(path, as_version=4)
            chapters.append(Chapter(path, match.group(1), chapter_title(notebook, path.stem)))
    return chapters


def nav(chapters: list[Chapter], i: int, index_href: str, extra: str = "", where: str = "top") -> str:
    links = []
    if i > 0:
        prev = chapters[i - 1]
        links.append(f'<a href="{prev.page}" rel="prev">&larr; {prev.number} {html.escape(prev.title)}</a>')
    links.append(f'<a href="{index_href}">Index</a>')
    if i + 1 < len(chapters):
        nxt = chapters[i + 1]
        links.append(f'<a href="{nxt.page}" rel="next">{nxt.number} {html.escape(nxt.title)} &rarr;</a>')
    if extra:
        links.append(extra)
    return f'<nav class="minilora-nav {where}">' + "".join(links) + "</nav>"


def with_nav(page: str, top: str, bottom: str) -> str:
    match = BODY.search(page)
    if not match or "</body>" not in page:
        raise ValueError("nbconvert produced a page without <body>...</body>")
    page = page[: match.end()] + "\n" + NAV_STYLE + top + page[match.end():]
    head, _, tail = page.rpartition("</body>")
    return head + bottom + "\n</body>" + tail


def render(chapters: list[Chapter], out: Path, index_href: str, exporter: HTMLExporter,
           twin: tuple[str, str, set[str]] | None = None) -> None:
    """Write one page per chapter into ``out``.

    ``twin`` is (folder, label, page names): a chapter whose page is also in that folder (its
    solutions, or the chapter of a solutions page) gets a link to it.
    """
    for i, chapter in enumerate(chapters):
        body, _ = exporter.from_notebook_node(nbformat.read(chapter.path, as_version=4))
        extra = ""
        if twin is not None and chapter.page in twin[2]:
            extra = f'<a href="{twin[0]}/{chapter.page}">{twin[1]}</a>'
        page = with_nav(body, nav(chapters, i, index_href, extra), nav(chapters, i, index_href, extra, "bottom"))
        (out / chapter.page).write_text(page, encoding="utf-8")


def index_page(chapters: list[Chapter], solutions: list[Chapter]) -> str:
    solved = {s.path.name for s in solutions}
    rows = []
    for chapter in chapters:
        link = f'<a href="{chapter.page}">{html.escape(chapter.title)}</a>'
        sol = ""
        if chapter.path.name in solved:
            sol = f' <small>(<a href="solutions/{chapter.page}">solutions</a>)</small>'
        rows.append(f"<li><span class=\"num\">{chapter.number}</span> {link}{sol}</li>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>minilora: LoRA from scratch to PEFT</title>
<style>
body {{ font-family: sans-serif; max-width: 50em; margin: 2em auto; padding: 0 1em; line-height: 1.5; }}
ol {{ list-style: none; padding: 0; }} li {{ margin: 0.5em 0; }}
.num {{ font-family: monospace; font-weight: bold; margin-right: 0.5em; }}
</style></head>
<body>
<h1>minilora: LoRA from scratch to PEFT</h1>
<p>A hands-on course on LoRA (Low-Rank Adaptation) in Jupyter notebooks. These pages show each
chapter as it is committed, with its stored outputs; to run it yourself, see the README
(<code>make lab</code>).</p>
<ol class="chapters">
{chr(10).join(rows)}
</ol>
</body></html>
"""


def build(out: Path, solutions: bool = False, notebooks: Path = NOTEBOOKS) -> Path:
    """Build the site into ``out`` (replacing it) and return the path of its index.html."""
    out = out.resolve()
    chapters = find_chapters(notebooks)
    if not chapters:
        raise SystemExit(f"no chapter notebooks (NN_*.ipynb) in {notebooks}")
    solved = find_chapters(notebooks / "solutions") if solutions else []
    exporter = HTMLExporter()  # the lab template; stored outputs only, nothing executed

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        render(chapters, tmp, "index.html", exporter, ("solutions", "Solutions", {s.page for s in solved}))
        if (notebooks / "figures").is_dir():
            shutil.copytree(notebooks / "figures", tmp / "figures")
        if solved:
            (tmp / "solutions").mkdir()
            render(solved, tmp / "solutions", "../index.html", exporter, ("..", "Chapter", {c.page for c in chapters}))
            if (notebooks / "solutions" / "figures").is_dir():
                shutil.copytree(notebooks / "solutions" / "figures", tmp / "solutions" / "figures")
        (tmp / "index.html").write_text(index_page(chapters, solved), encoding="utf-8")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(ROOT / "site"), help="output folder (default: site/)")
    parser.add_argument("--solutions", action="store_true", help="also render notebooks/solutions/")
    args = parser.parse_args(argv)
    index = build(Path(args.out), solutions=args.solutions)
    print(f"site: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
