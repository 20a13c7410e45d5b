"""The offline kit (make kit), end to end: build it, then set a laptop up from it with pip --no-index and no
pip configuration at all, as `make lab KIT=...` does, and run chapter 00 and load both models there.

Slow (a ~1 GB kit, a fresh virtual environment), so it runs from `make test-kit`, not `make test`.
`make` and `git` are needed, as for the course itself. The kit's web pages (site/) and its README are
also checked cheaply, on two chapters, in every `make test`.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools import make_kit, make_site
from tools.doctor import TORCH_PIN

ROOT = Path(__file__).resolve().parents[1]


def test_the_kit_carries_the_course_as_web_pages_that_read_offline(tmp_path):
    """add_site, as make_kit.build calls it, on a kit whose course/ holds two chapters and a solution."""
    notebooks = tmp_path / "kit" / "course" / "notebooks"
    (notebooks / "solutions").mkdir(parents=True)
    for name in ("01_why_low_rank.ipynb", "02_lora_layer_from_scratch.ipynb", "solutions/01_why_low_rank.ipynb"):
        shutil.copy(ROOT / "notebooks" / name, notebooks / name)
    shutil.copytree(ROOT / "notebooks" / "figures", notebooks / "figures")
    index = make_kit.add_site(tmp_path / "kit")
    site = tmp_path / "kit" / "site"
    assert index == site / "index.html" and index.is_file()
    pages = [index, site / "01_why_low_rank.html", site / "02_lora_layer_from_scratch.html",
             site / "solutions" / "01_why_low_rank.html"]
    assert all(p.is_file() for p in pages)
    assert (site / "_static" / "mathjax" / make_site.MATHJAX_JS).stat().st_size > 1_000_000
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert make_site.remote_loads(text) == [], page
        assert f"_static/mathjax/{make_site.MATHJAX_JS}" in text, f"{page.name} does not load the kit's MathJax"
    # the README says where the pages are, and lists site/ with its size
    readme = make_kit.readme_text("abc1234", {"wheels": 900e6, "models": 600e6, "course": 20e6, "site": 30e6},
                                  120, f"torch-{TORCH_PIN}-cp311-none-linux_x86_64.whl")
    assert "open site/index.html" in readme
    assert "site/         30 MB" in readme


def offline_env(kit: Path) -> dict:
    """The environment of a laptop without network: no pip settings from this machine (no extra indexes,
    no find-links, no configuration files), the kit's models as the cache, no hub."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "MINILORA_", "VIRTUAL_ENV"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               MINILORA_CACHE=str(kit / "models"), HF_HUB_OFFLINE="1")
    return env


def sh(cmd, **kw):
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


@pytest.mark.kit
@pytest.mark.skipif(os.environ.get("MINILORA_TEST_KIT") != "1",
                    reason="slow (builds a 1 GB kit and a virtual environment): run make test-kit")
def test_a_laptop_sets_up_from_the_kit_with_no_index_and_runs_chapter_00(tmp_path):
    t0 = time.monotonic()
    kit = tmp_path / "kit"
    sh([sys.executable, str(ROOT / "tools" / "make_kit.py"), str(kit)])
    t_build = time.monotonic() - t0
    assert {p.name for p in kit.iterdir()} == {"wheels", "models", "course", "site", "README.txt"}
    assert (kit / "site" / "index.html").is_file() and (kit / "site" / "solutions" / "00_welcome.html").is_file()
    assert "open site/index.html" in (kit / "README.txt").read_text()
    assert any(kit.glob(f"wheels/torch-{TORCH_PIN}*.whl")) and not any(kit.glob("wheels/minilora-*"))
    assert (kit / "course" / "notebooks" / "00_welcome.ipynb").exists()
    assert not (kit / "course" / ".git").exists()
    size = sum(p.stat().st_size for p in kit.rglob("*") if p.is_file())

    # the laptop: the kit on its disk, then what the kit's README says: cd course && make lab KIT=..
    # (here `make venv assets`, which is make lab without opening JupyterLab), pip seeing only the kit
    env = offline_env(kit)
    course = kit / "course"
    made = sh(["make", "venv", "assets", "KIT=..", f"PYTHON={sys.executable}"], env=env, cwd=course)
    assert "torch: installing from the kit" in made.stdout
    py = str(course / ".venv" / "bin" / "python")
    t_install = time.monotonic() - t0 - t_build
    check = sh([py, "-m", "pip", "check"], env=env)
    assert "No broken requirements" in check.stdout
    doctor = subprocess.run(["make", "doctor", "KIT=.."], env=env, cwd=course, text=True, capture_output=True)
    print(doctor.stdout)
    assert doctor.returncode == 0 and "Ready for the course." in doctor.stdout, doctor.stdout + doctor.stderr
    assert "[ok  ] model SmolLM2-135M-Instruct" in doctor.stdout

    # chapter 00, executed in that environment's kernel (its set-up check included)
    out = tmp_path / "00_executed.ipynb"
    sh([py, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--output", str(out),
        "--ExecutePreprocessor.timeout=600", "--ExecutePreprocessor.kernel_name=python3",
        str(course / "notebooks" / "00_welcome.ipynb")], env=env, cwd=course / "notebooks")
    cells = [c for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"]
    text = "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))
    assert "Everything is ready." in text and "set-up ok" in text
    assert "minilora" in sh([py, "-c", "import minilora, sys; print(minilora.__file__)"], env=env).stdout

    # both models load from the kit's cache, and compute
    probe = sh([py, "-c", """
import json, torch
from minilora.course.models import load_chat_model, load_encoder, model_path, CHAT_DIR
enc, tok = load_encoder(num_labels=2)
with torch.no_grad():
    logits = enc(**tok(["a fine kit"], return_tensors="pt")).logits
chat, ctok = load_chat_model()
ids = ctok("The capital of France is", return_tensors="pt").input_ids
with torch.no_grad():
    nxt = chat(ids).logits[0, -1].argmax()
print(json.dumps({"encoder_logits": list(logits.shape), "chat_params": sum(p.numel() for p in chat.parameters()),
                  "next_token": ctok.decode(nxt), "chat_path": str(model_path(CHAT_DIR))}))
"""], env=env, cwd=tmp_path)
    got = json.loads(probe.stdout.strip().splitlines()[-1])
    assert got["encoder_logits"] == [1, 2]
    assert 134e6 < got["chat_params"] < 136e6  # SmolLM2-135M
    assert Path(got["chat_path"]) == kit / "models" / "SmolLM2-135M-Instruct"
    print(f"\nkit: {size / 1e9:.2f} GB, built in {t_build:.0f} s, installed offline in {t_install:.0f} s, "
          f"all in {time.monotonic() - t0:.0f} s; SmolLM2's next token after 'The capital of France is': "
          f"{got['next_token']!r}")
