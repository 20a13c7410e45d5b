"""Render the chapters, with their stored outputs, to a static HTML site that reads offline (make site).

Nothing is executed: each notebook is converted as it is committed, its output images embedded
by nbconvert. The site gets an index of the chapters, previous / index / next links on every page,
and a copy of notebooks/figures/ so that the diagrams the markdown references resolve.

No page loads anything from the network, so the site reads the same from a USB stick in a room
without Wi-Fi (make kit puts it there). The maths ($\\alpha / r$, $$\\Delta W = BA$$) is typeset in the
browser by MathJax 3, copied into the site as ``_static/mathjax/tex-svg-full.js``: one self-contained
file (every TeX extension, SVG output, so no web fonts to fetch), taken from the PyPI package
django-static-mathjax (a dev dependency; it is MathJax's own build and needs no Django). nbconvert's
lab template otherwise loads require.js and MathJax 2 from a CDN (and mermaid and the widget manager
when a notebook has them): those blocks are replaced by the local MathJax, and every page is checked for
a remote script, stylesheet or image before the site is written.

The site is built in a temporary folder beside the target and then moved into place, so that a failed
build leaves the previous site untouched.

    python tools/make_site.py [OUT] [--solutions] [--notebooks FOLDER]
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import jinja2
import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CHAPTER = re.compile(r"^(\d\d)_.+\.ipynb$")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
BODY = re.compile(r"<body[^>]*>", re.IGNORECASE)
MATH = re.compile(r"(\$\$.+?\$\$|\$[^$]+\$)")  # the maths of a heading, left exactly as written
LEADING_NUMBER = re.compile(r"^(?:chapter\s+)?(\d+)\s*(?:[·:.\-–—]\s*)?", re.IGNORECASE)
# what a page would fetch from elsewhere as it opens: a src (script, image, frame, media), a stylesheet or icon
# <link>, a CSS url(...) or @import, a JavaScript import(...); links to follow (<a href>) are fine
_REMOTE = r"((?:https?:)?//[^\"'\s)>]+)"
REMOTE_LOAD = re.compile(rf"<(?:script|img|iframe|source|audio|video|embed|input)\b[^>]*\bsrc\s*=\s*[\"']?{_REMOTE}"
                         rf"|<link\b[^>]*\bhref\s*=\s*[\"']?{_REMOTE}"
                         rf"|\burl\(\s*[\"']?{_REMOTE}|@import\s+[\"']{_REMOTE}|\bimport\(\s*[\"']{_REMOTE}",
                         re.IGNORECASE)

STATIC = "_static"
MATHJAX_JS = "tex-svg-full.js"
MATHJAX_PACKAGE = "django-static-mathjax"  # its import name is `mathjax`; files under mathjax/static/mathjax/

NAV_STYLE = """<style>
.minilora-nav { font-family: sans-serif; padding: 0.6em 1em; background: #f4f4f4;
  border-bottom: 1px solid #ddd; display: flex; gap: 1.5em; }
.minilora-nav.bottom { border-top: 1px solid #ddd; border-bottom: none; }
</style>"""


def mathjax_head(static: str) -> str:
    """The MathJax 3 configuration and script, for a page that reaches the site's _static/ as ``static``.

    The delimiters are the ones the notebooks are written with (JupyterLab's and nbconvert's): $...$ and
    \\(...\\) inline, $$...$$ and \\[...\\] displayed, \\$ for a dollar sign; <pre> and <code> are left alone.
    """
    return f"""<script>
window.MathJax = {{
  tex: {{inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
        processEscapes: true, processEnvironments: true, tags: 'ams'}},
  options: {{ignoreHtmlClass: 'tex2jax_ignore', processHtmlClass: 'tex2jax_process'}},
  svg: {{fontCache: 'global'}}
}};
</script>
<script defer id="MathJax-script" src="{static}/mathjax/{MATHJAX_JS}"></script>"""


# nbconvert's lab template, less everything it would fetch from a CDN, plus the local MathJax
TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}
{{ resources.minilora_mathjax }}
{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


@dataclass
class Chapter:
    path: Path
    number: str
    title: str

    @property
    def page(self) -> str:
        return self.path.with_suffix(".html").name


def plain_title(heading: str, number: str | None = None) -> str:
    """A markdown heading as plain text: no emphasis, code marks or link syntax (its maths kept as written,
    for MathJax), and without a leading chapter number equal to ``number`` (the site shows that once)."""
    parts = MATH.split(heading)
    for i in range(0, len(parts), 2):  # the text between the maths
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", parts[i])  # [text](url) -> text
        text = re.sub(r"[*`]|(?<!\w)_+|_+(?!\w)", "", text)  # **bold**, *it*, `code`, _it_ (not snake_case)
        parts[i] = text
    title = re.sub(r"\s+", " ", "".join(parts)).strip()
    match = LEADING_NUMBER.match(title)
    if number is not None and match and int(match.group(1)) == int(number) and match.end() < len(title):
        title = title[match.end():].strip()
    return title


def chapter_title(notebook: nbformat.NotebookNode, fallback: str, number: str | None = None) -> str:
    """The first markdown heading as plain text (see plain_title), else ``fallback``."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            match = HEADING.search(cell.source)
            if match:
                return plain_title(match.group(1), number) or fallback
    return fallback


def find_chapters(folder: Path) -> list[Chapter]:
    chapters = []
    for path in sorted(folder.glob("*.ipynb")):
        match = CHAPTER.match(path.name)
        if match:
            notebook = nbformat.read(path, as_version=4)
            number = match.group(1)
            chapters.append(Chapter(path, number, chapter_title(notebook, path.stem, number)))
    return chapters


def remote_loads(page: str) -> list[str]:
    """The addresses that a page would fetch from the network as it opens (scripts, styles, images, imports)."""
    return [next(g for g in m.groups() if g) for m in REMOTE_LOAD.finditer(page)]


def mathjax_source() -> Path:
    """MathJax's single-file TeX-to-SVG build, as the installed django-static-mathjax ships it."""
    spec = importlib.util.find_spec("mathjax")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for root in roots:
        path = root / "static" / "mathjax" / "es5" / MATHJAX_JS
        if path.is_file():
            return path
    raise SystemExit(f"MathJax is not installed, and the site would show raw LaTeX: pip install -e '.[dev]' "
                     f"(make site does), which brings {MATHJAX_PACKAGE}")


def copy_static(out: Path) -> None:
    """_static/mathjax/: MathJax's script and its licence (Apache-2.0, which asks for the licence alongside)."""
    source = mathjax_source()
    target = out / STATIC / "mathjax"
    target.mkdir(parents=True)
    shutil.copy2(source, target / MATHJAX_JS)
    licence = source.parent.parent / "LICENSE"
    if licence.is_file():
        shutil.copy2(licence, target / "LICENSE")


def exporter() -> HTMLExporter:
    """nbconvert's lab template with the offline head (TEMPLATE); stored outputs only, nothing executed."""
    return HTMLExporter(extra_loaders=[jinja2.DictLoader({"minilora_site.html.j2": TEMPLATE})],
                        template_file="minilora_site.html.j2")


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


def write_page(path: Path, page: str) -> None:
    """Write ``page``, refusing one that would fetch anything from the network (the site must read offline)."""
    remote = remote_loads(page)
    if remote:
        raise ValueError(f"{path.name} would load {remote} from the network; the site must read offline")
    path.write_text(page, encoding="utf-8")


def render(chapters: list[Chapter], out: Path, index_href: str, exporter: HTMLExporter, static: str,
           twin: tuple[str, str, set[str]] | None = None) -> None:
    """Write one page per chapter into ``out``; ``static`` is the site's _static/ as seen from ``out``.

    ``twin`` is (folder, label, page names): a chapter whose page is also in that folder (its
    solutions, or the chapter of a solutions page) gets a link to it.
    """
    for i, chapter in enumerate(chapters):
        body, _ = exporter.from_notebook_node(nbformat.read(chapter.path, as_version=4),
                                              resources={"minilora_mathjax": mathjax_head(static)})
        extra = ""
        if twin is not None and chapter.page in twin[2]:
            extra = f'<a href="{twin[0]}/{chapter.page}">{twin[1]}</a>'
        page = with_nav(body, nav(chapters, i, index_href, extra), nav(chapters, i, index_href, extra, "bottom"))
        write_page(out / chapter.page, page)


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
</style>
{mathjax_head(STATIC)}
</head>
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
    mathjax_source()  # before any work: say at once when MathJax is missing
    pages = exporter()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        copy_static(tmp)
        render(chapters, tmp, "index.html", pages, STATIC, ("solutions", "Solutions", {s.page for s in solved}))
        if (notebooks / "figures").is_dir():
            shutil.copytree(notebooks / "figures", tmp / "figures")
        if solved:
            (tmp / "solutions").mkdir()
            render(solved, tmp / "solutions", "../index.html", pages, f"../{STATIC}",
                   ("..", "Chapter", {c.page for c in chapters}))
            if (notebooks / "solutions" / "figures").is_dir():
                shutil.copytree(notebooks / "solutions" / "figures", tmp / "solutions" / "figures")
        write_page(tmp / "index.html", index_page(chapters, solved))
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
    parser.add_argument("--notebooks", default=str(NOTEBOOKS), help="the chapters' folder (default: notebooks/)")
    args = parser.parse_args(argv)
    index = build(Path(args.out), solutions=args.solutions, notebooks=Path(args.notebooks))
    print(f"site: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
