"""The course's two pretrained models, loaded offline from the cache.  (Chapters 04, 05, 07)

* ``load_encoder()``: all-MiniLM-L6-v2, a 6-layer BERT (hidden 384, 22.7M parameters). With
  ``num_labels`` it is ``AutoModelForSequenceClassification`` with a fresh classifier head.
* ``load_chat_model()``: SmolLM2-135M-Instruct, a 30-layer Llama (hidden 576, 134.5M parameters,
  input and output embeddings tied) with a ChatML chat template.

Both read only local files. If a model is not cached the loader raises ``AssetsMissing`` telling
you to run ``make assets`` while online; it never tries the network and never hangs.
The cache is ``~/.cache/minilora``, or the folder named by ``$MINILORA_CACHE``.
"""
from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging

__all__ = ["ENCODER_DIR", "CHAT_DIR", "ENCODER_NAME", "CHAT_NAME", "AssetsMissing", "cache_dir", "cached_models",
           "model_path", "load_encoder", "load_chat_model"]

ENCODER_DIR = "all-MiniLM-L6-v2"
CHAT_DIR = "SmolLM2-135M-Instruct"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
CHAT_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


class AssetsMissing(FileNotFoundError):
    """A pretrained model is not in the cache yet."""


def cache_dir() -> Path:
    """The course cache folder (created if needed): ``$MINILORA_CACHE`` or ``~/.cache/minilora``."""
    path = Path(os.environ.get("MINILORA_CACHE", "~/.cache/minilora")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cached(folder: str) -> Path | None:
    path = cache_dir() / folder
    return path if (path / "model.safetensors").exists() else None


def cached_models() -> dict[str, Path | None]:
    """``{name: folder or None}`` for the course's models."""
    return {ENCODER_DIR: _cached(ENCODER_DIR), CHAT_DIR: _cached(CHAT_DIR)}


def model_path(folder: str) -> Path:
    """The cached folder of a model, or ``AssetsMissing`` with what to do."""
    path = _cached(folder)
    if path is None:
        raise AssetsMissing(
            f"{folder} is not cached in {cache_dir()}. Run `make assets` once while online "
            "(or `python -m minilora.assets`); after that everything works offline."
        )
    return path


def load_encoder(num_labels: int | None = None, **kwargs):
    """all-MiniLM-L6-v2 and its tokenizer: ``(model, tokenizer)``.

    ``num_labels=None`` gives the bare ``BertModel``; an int gives a sequence classifier whose new
    head is initialised from torch's current random state (seed first for reproducibility)."""
    path = model_path(ENCODER_DIR)
    tok = AutoTokenizer.from_pretrained(path)
    if num_labels is None:
        model = AutoModel.from_pretrained(path, **kwargs)
    else:
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # the "classifier is newly initialised" report is expected here
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **kwargs)
        finally:
            logging.set_verbosity(verbosity)
    model.config.name_or_path = ENCODER_NAME
    return model.eval(), tok


def load_chat_model(**kwargs):
    """SmolLM2-135M-Instruct (fp32) and its tokenizer: ``(model, tokenizer)``."""
    path = model_path(CHAT_DIR)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.config.name_or_path = CHAT_NAME
    return model.eval(), tok
