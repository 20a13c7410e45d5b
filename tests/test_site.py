"""make site: the chapters rendered with their stored outputs, an index, links that resolve."""

import html
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

from tools import make_site

ROOT = Path(__file__).resolve().parent.parent

CHAPTERS = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if re.match(r"\d\d_", p.name))


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.refs.append(value)
            if tag == "img" and name == "src" and value:
                self.imgs.append(value)


def parse(page: Path) -> Links:
    links = Links()
    links.feed(page.read_text(encoding="utf-8"))
    return links


def local_targets(page: Path, refs: list[str]) -> list[Path]:
    """The files that the page's relative links point at (web addresses, data: and #anchors left out)."""
    targets = []
    for ref in refs:
        parts = urlsplit(ref)
        if parts.scheme or parts.netloc or not parts.path:
            continue
        targets.append((page.parent / unquote(parts.path)).resolve())
    return targets


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    index = make_site.build(out)
    assert index == out / "index.html"
    return out


def test_index_links_every_chapter_with_its_number_and_title(site):
    index = site / "index.html"
    hrefs = parse(index).refs
    text = index.read_text(encoding="utf-8")
    assert CHAPTERS, "no chapter notebooks found"
    for notebook in CHAPTERS:
        page = notebook.with_suffix(".html").name
        assert page in hrefs, f"the index does not link {page}"
        assert (site / page).is_file()
        assert f'<span class="num">{notebook.name[:2]}</span>' in text
    # the title is the first markdown heading of the chapter, not its file name
    assert "Welcome" in text and "00_welcome" not in text.replace("00_welcome.html", "")


@pytest.mark.parametrize("name", ["index.html", "02_lora_layer_from_scratch.html"])
def test_every_local_link_resolves(site, name):
    page = site / name
    targets = local_targets(page, parse(page).refs)
    assert targets, f"{name} has no local links"
    missing = [str(t) for t in targets if not t.is_file()]
    assert not missing, f"{name} links to missing files: {missing}"


def test_chapter_02_shows_its_figures_and_links_its_neighbours(site):
    page = site / "02_lora_layer_from_scratch.html"
    links = parse(page)
    assert "figures/lora_bypass.svg" in links.imgs
    assert (site / "figures" / "lora_bypass.svg").is_file()
    assert "01_why_low_rank.html" in links.refs
    assert "03_first_lora_finetune.html" in links.refs
    assert "index.html" in links.refs
    text = page.read_text(encoding="utf-8")
    assert '<a href="01_why_low_rank.html" rel="prev">' in text
    assert '<a href="03_first_lora_finetune.html" rel="next">' in text
    # the first chapter has no previous, the last no next
    assert 'rel="prev"' not in (site / CHAPTERS[0].with_suffix(".html").name).read_text(encoding="utf-8")
    assert 'rel="next"' not in (site / CHAPTERS[-1].with_suffix(".html").name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["01_why_low_rank.html", "02_lora_layer_from_scratch.html"])
def test_chapter_pages_contain_their_output_images(site, name):
    imgs = parse(site / name).imgs
    assert any(src.startswith("data:image/png;base64,") for src in imgs), f"{name}: no embedded output image"


def test_stored_outputs_are_rendered_not_re_executed(site):
    notebook = nbformat.read(ROOT / "notebooks" / "02_lora_layer_from_scratch.ipynb", as_version=4)
    stream = next(o.text for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.output_type == "stream" and o.text.strip())
    first_line = stream.strip().splitlines()[0]
    assert html.escape(first_line, quote=False) in (site / "02_lora_layer_from_scratch.html").read_text()


def test_rebuild_replaces_the_site_and_leaves_no_temporary_folders(tmp_path):
    notebooks = tmp_path / "notebooks"
    (notebooks / "solutions").mkdir(parents=True)
    shutil.copy(CHAPTERS[0], notebooks)
    shutil.copy(ROOT / "notebooks" / "solutions" / CHAPTERS[0].name, notebooks / "solutions")
    out = tmp_path / "built" / "site"
    out.mkdir(parents=True)
    (out / "stale.html").write_text("old")
    make_site.build(out, solutions=True, notebooks=notebooks)
    assert not (out / "stale.html").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["site"]
    page = CHAPTERS[0].with_suffix(".html").name
    assert f"solutions/{page}" in parse(out / "index.html").refs
    for name in ("index.html", page, f"solutions/{page}"):
        missing = [str(t) for t in local_targets(out / name, parse(out / name).refs) if not t.is_file()]
        assert not missing, f"{name} links to missing files: {missing}"


def test_no_page_loads_anything_from_the_network_and_each_loads_the_sites_mathjax(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == len(CHAPTERS) + 1
    mathjax = site / "_static" / "mathjax" / make_site.MATHJAX_JS
    assert mathjax.stat().st_size > 1_000_000 and (mathjax.parent / "LICENSE").is_file()
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert make_site.remote_loads(text) == [], f"{page.name} loads from the network"
        assert "cdnjs" not in text and "require.min.js" not in text
        assert mathjax in local_targets(page, parse(page).refs), f"{page.name} does not load the site's MathJax"


def test_remote_loads_finds_what_a_page_would_fetch_and_leaves_links_alone():
    page = """<script src="https://cdn.example/require.min.js"></script>
    <link rel="stylesheet" href="//fonts.example/a.css">
    <style>@import "https://x.example/b.css"; .a { background: url(https://x.example/c.png) }</style>
    <a href="https://peft.example/docs">docs</a><img src="data:image/png;base64,AAAA"><img src="figures/a.svg">
    <script src="_static/mathjax/tex-svg-full.js"></script>"""
    assert make_site.remote_loads(page) == ["https://cdn.example/require.min.js", "//fonts.example/a.css",
                                            "https://x.example/b.css", "https://x.example/c.png"]


@pytest.mark.parametrize("heading, number, title", [
    ("00 Welcome: set-up check", "00", "Welcome: set-up check"),
    ("08 · Memory, mixed precision and QLoRA", "08", "Memory, mixed precision and QLoRA"),
    ("**01** Why *low* rank? the $\\Delta W$ of `W_0`", "01", "Why low rank? the $\\Delta W$ of W_0"),
    ("$W_0 + B_{i}A$ and a_snake_case name, _emphasis_", None, "$W_0 + B_{i}A$ and a_snake_case name, emphasis"),
    ("[LoRA](https://arxiv.org/abs/2106.09685) in 10 lines", "03", "LoRA in 10 lines"),
    ("10 Prompt tuning", "01", "10 Prompt tuning"),  # another number is part of the title
    ("2024 in review", "02", "2024 in review"),
])
def test_titles_are_plain_text_with_their_maths_and_without_the_chapter_number(heading, number, title):
    assert make_site.plain_title(heading, number) == title


def test_index_and_neighbour_links_show_each_chapter_number_once(site):
    index = (site / "index.html").read_text(encoding="utf-8")
    page = (site / "02_lora_layer_from_scratch.html").read_text(encoding="utf-8")
    for notebook in CHAPTERS:
        number = notebook.name[:2]
        assert not re.search(rf'<span class="num">{number}</span> <a [^>]*>\W*{number}\b', index)
    assert re.search(r'rel="prev">&larr; 01 Why low rank\?', page)
    assert not re.search(r'rel="(prev|next)">(&larr; )?(\d\d) [^\w<]*\3\b', page)
    # the maths of a title is left for MathJax, which typesets it with the page (tests/test_browser.py)
    assert "$\\Delta W$" in index and "_static/mathjax/" in index
