r"""The course's two pretrained models, loaded offline from the cache.  (Chapters 04, 05, 07)

* ``load_encoder()``: all-MiniLM-L6-v2, a 6-layer BERT (hidden 384, 22.7M parameters). With
  ``num_labels`` it is a ``SentenceClassifier``: the way this sentence-transformers model was
  trained to embed a sentence, the *masked mean* of its last hidden states
  :math:`e = \sum_t m_t h_t / \sum_t m_t` (padding excluded), then a new linear head,
  ``logits = W e + b``, named ``classifier``. (BERT's own ``[CLS]`` + pooler head is not what
  MiniLM was trained for: it was trained to produce mean-pooled embeddings.)
* ``load_chat_model()``: SmolLM2-135M-Instruct, a 30-layer Llama (hidden 576, 134.5M parameters,
  input and output embeddings tied) with a ChatML chat template.

Both read only local files. If a model is not cached the loader raises ``AssetsMissing`` telling
you to run ``make assets`` while online; it never tries the network and never hangs.
The cache is ``~/.cache/minilora``, or the folder named by ``$MINILORA_CACHE``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging

from ..utils import check_int

__all__ = ["ENCODER_DIR", "CHAT_DIR", "ENCODER_NAME", "CHAT_NAME", "AssetsMissing", "cache_dir", "cached_models",
           "model_path", "display_path", "mean_pool", "SentenceClassifier", "load_encoder", "load_chat_model"]

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
            "(or `python -m minilora.course.assets`); after that everything works offline."
        )
    return path


def display_path(path: Path | str) -> str:
    """``path`` with the home folder written as ``~`` (for printing: no machine paths in notebooks)."""
    path, home = str(path), str(Path.home())
    return "~" + path[len(home):] if path == home or path.startswith(home + os.sep) else path


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The masked mean over the sequence: (batch, seq, dim) -> (batch, dim), padding excluded."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


class SentenceClassifier(nn.Module):
    """A sentence encoder's body, masked mean pooling, and a linear head named ``classifier``.

    ``forward(input_ids, attention_mask, token_type_ids=None, labels=None)`` returns a transformers
    ``SequenceClassifierOutput`` (``.logits``, and ``.loss``, the cross-entropy, when ``labels`` are
    given), so ``minilora.train.fit``, PEFT's ``get_peft_model`` and ``PeftModel.from_pretrained``
    take it as they take a transformers classifier. ``config`` is the body's, with ``num_labels``.
    The head starts as transformers starts a new head: weights N(0, ``initializer_range``), bias 0,
    from torch's current random state (seed first)."""

    def __init__(self, body: nn.Module, num_labels: int):
        super().__init__()
        check_int(num_labels, "num_labels", minimum=2, hint="It is the number of classes.")
        self.bert = body
        self.config = body.config
        self.config.num_labels = num_labels
        self.classifier = nn.Linear(body.config.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=getattr(body.config, "initializer_range", 0.02))
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           **kwargs).last_hidden_state  # (batch, seq, hidden)
        logits = self.classifier(mean_pool(hidden, attention_mask))  # (batch, num_labels)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _quietly(load, *args, **kwargs):
    """Call a transformers loader without its progress bar and its expected reports (weights of the
    checkpoint's pooler left unused, for the mean-pooling classifier)."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        return load(*args, **kwargs)
    finally:
        logging.enable_progress_bar()
        logging.set_verbosity(verbosity)


def load_encoder(num_labels: int | None = None, **kwargs):
    """all-MiniLM-L6-v2 and its tokenizer: ``(model, tokenizer)``.

    ``num_labels=None`` gives the bare ``BertModel`` (with BERT's pooler, as the checkpoint holds
    it); an int gives a ``SentenceClassifier`` (mean pooling, no pooler) whose new head is drawn
    from torch's current random state (seed first for reproducibility)."""
    check_int(num_labels, "num_labels", minimum=2, optional=True, hint="It is the number of classes.")
    path = model_path(ENCODER_DIR)
    tok = AutoTokenizer.from_pretrained(path)
    if num_labels is None:
        model = _quietly(AutoModel.from_pretrained, path, **kwargs)
    else:
        body = _quietly(AutoModel.from_pretrained, path, add_pooling_layer=False, **kwargs)
        model = SentenceClassifier(body, num_labels)
    model.config.name_or_path = ENCODER_NAME
    return model.eval(), tok


def load_chat_model(**kwargs):
    """SmolLM2-135M-Instruct (fp32) and its tokenizer: ``(model, tokenizer)``."""
    path = model_path(CHAT_DIR)
    tok = AutoTokenizer.from_pretrained(path)
    model = _quietly(AutoModelForCausalLM.from_pretrained, path, **kwargs)
    model.config.name_or_path = CHAT_NAME
    return model.eval(), tok
