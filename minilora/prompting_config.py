r"""The configs of prompt tuning and prefix tuning, PEFT's ``PromptTuningConfig`` and ``PrefixTuningConfig``,
and the sizes a prefix takes from the model.  (Chapter 10)

A prompt is :math:`n` = ``num_virtual_tokens`` soft embeddings of the model's width :math:`d`; a prefix is,
for each of the :math:`L` layers, the keys and values of :math:`n` virtual tokens,
:math:`n \cdot L \cdot 2 \cdot d_{kv}` numbers with :math:`d_{kv}` = kv_heads × head_dim
(``fill_from_model`` reads :math:`L`, :math:`d` and the heads from the model's config). Every field is
checked when a config is made, and again by ``add_prompt_learning`` (a field may have been set since):
``TypeError`` for a value of the wrong type (``num_virtual_tokens=True`` or ``"8"``), ``ValueError`` for
a wrong value (``num_virtual_tokens=0``). ``minilora.prompting`` builds the modules from them.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import KW_ONLY, dataclass
from typing import ClassVar

from torch import nn

from .utils import check_bool, check_int

__all__ = ["PromptTuningConfig", "PrefixTuningConfig"]


def check_adapter_name(name) -> str:
    """``name`` if it can name an adapter (a key of the ``nn.ModuleDict`` that holds the adapters), else
    ``TypeError`` (not a string) or ``ValueError`` (empty, with a dot, or a ModuleDict attribute)."""
    if not isinstance(name, str):
        raise TypeError(f"an adapter name is a string, got {name!r} ({type(name).__name__}); e.g. 'default'.")
    if not name or "." in name or hasattr(nn.ModuleDict(), name):
        raise ValueError(f"an adapter name must be a non-empty string without dots that is not an nn.Module "
                         f"attribute, got {name!r}; e.g. 'default' or 'sentiment_v2'.")
    return name


def _check_optional(value, name: str, types: tuple, what: str) -> None:
    if value is not None and not isinstance(value, types):
        raise TypeError(f"{name} must be {what} or None, got {value!r} ({type(value).__name__}).")


@dataclass
class _PromptLearningConfig:
    num_virtual_tokens: int
    _: KW_ONLY
    task_type: str = "CAUSAL_LM"
    num_layers: int | None = None  # the next four are read from the model's config by fill_from_model
    token_dim: int | None = None
    num_attention_heads: int | None = None
    num_transformer_submodules: int | None = None
    base_model_name_or_path: str | None = None
    inference_mode: bool = False  # True once saved: a prefix is then stored already projected
    peft_type: ClassVar[str]

    def __post_init__(self):  # also run by dataclasses.replace: add_prompt_learning re-checks a config changed since
        check_int(self.num_virtual_tokens, "num_virtual_tokens", hint="e.g. PromptTuningConfig(num_virtual_tokens=8).")
        for name in ("num_layers", "token_dim", "num_attention_heads"):
            check_int(getattr(self, name), name, optional=True, hint="Leave it None: it is read from the model.")
        _check_optional(self.base_model_name_or_path, "base_model_name_or_path", (str,), "a string")
        check_bool(self.inference_mode, "inference_mode")
        if not isinstance(self.task_type, str):
            raise TypeError(f"task_type must be a string, got {self.task_type!r}; use task_type='CAUSAL_LM'.")
        if self.task_type != "CAUSAL_LM":
            raise ValueError(f"task_type={self.task_type!r}: minilora's prompt learning is for causal language "
                             "models (task_type='CAUSAL_LM'); use PEFT for other tasks.")
        if self.num_transformer_submodules not in (None, 1):
            raise ValueError("num_transformer_submodules must be 1 for a decoder-only model (2 is for "
                             f"encoder-decoder models), got {self.num_transformer_submodules!r}.")

    def to_dict(self) -> dict:
        """The fields under PEFT's names: ``peft.<ConfigClass>(**config.to_dict())`` accepts them."""
        return {"peft_type": self.peft_type, **dataclasses.asdict(self)}


@dataclass
class PromptTuningConfig(_PromptLearningConfig):
    """Prompt tuning: ``num_virtual_tokens`` soft embeddings, initialised at random (N(0, 1), as
    ``nn.Embedding``) or with ``prompt_tuning_init="TEXT"`` from the embeddings of the tokens of
    ``prompt_tuning_init_text``, repeated or cut to ``num_virtual_tokens``."""
    peft_type: ClassVar[str] = "PROMPT_TUNING"
    prompt_tuning_init: str = "RANDOM"
    prompt_tuning_init_text: str | None = None
    tokenizer_name_or_path: str | None = None
    tokenizer_kwargs: dict | None = None

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.prompt_tuning_init, str):
            raise TypeError(f"prompt_tuning_init must be 'RANDOM' or 'TEXT', got {self.prompt_tuning_init!r}.")
        _check_optional(self.prompt_tuning_init_text, "prompt_tuning_init_text", (str,), "a string")
        _check_optional(self.tokenizer_name_or_path, "tokenizer_name_or_path", (str, os.PathLike), "a name or a path")
        _check_optional(self.tokenizer_kwargs, "tokenizer_kwargs", (dict,), "a dict")
        if self.prompt_tuning_init not in ("RANDOM", "TEXT"):
            raise ValueError(f"prompt_tuning_init={self.prompt_tuning_init!r}: minilora implements 'RANDOM' and "
                             "'TEXT'.")
        if self.prompt_tuning_init == "TEXT" and not (self.tokenizer_name_or_path and self.prompt_tuning_init_text):
            raise ValueError("prompt_tuning_init='TEXT' needs prompt_tuning_init_text and tokenizer_name_or_path.")


@dataclass
class PrefixTuningConfig(_PromptLearningConfig):
    """Prefix tuning: per-layer key/value prefixes of ``num_virtual_tokens`` positions; with
    ``prefix_projection`` through PEFT's MLP of width ``encoder_hidden_size`` (default ``token_dim``)."""
    peft_type: ClassVar[str] = "PREFIX_TUNING"
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None

    def __post_init__(self):
        super().__post_init__()
        check_bool(self.prefix_projection, "prefix_projection")
        check_int(self.encoder_hidden_size, "encoder_hidden_size", optional=True,
                  hint="Leave it None for the model's width.")


def fill_from_model(config: _PromptLearningConfig, model: nn.Module) -> _PromptLearningConfig:
    """A copy of ``config`` with the sizes PEFT reads from the model's config: ``num_layers``,
    ``token_dim`` (hidden size) and ``num_attention_heads``; for a prefix on a grouped-query model
    ``token_dim`` = kv_heads × head_dim and ``num_attention_heads`` = kv_heads."""
    mc = model.config
    d = mc.to_dict()
    d = d.get("text_config", d)  # a vision-language model: its language model's config

    def read(value, *keys):
        value = value if value is not None else next((d[k] for k in keys if d.get(k) is not None), None)
        if value is None:
            raise ValueError(f"cannot read {keys[0]} from the model's config; set it in the {type(config).__name__}.")
        return value

    layers = read(config.num_layers if config.num_layers is not None else getattr(mc, "num_hidden_layers", None),
                  "num_layers", "n_layer")
    dim = read(config.token_dim, "hidden_size", "n_embd", "d_model")
    heads = read(config.num_attention_heads, "num_attention_heads", "n_head", "num_heads")
    if config.peft_type == "PREFIX_TUNING" and "num_key_value_heads" in d:  # grouped-query attention
        head_dim = d["head_dim"] if d.get("head_dim") is not None else dim // heads
        heads = d["num_key_value_heads"]
        dim = head_dim * heads
    extra = {"encoder_hidden_size": config.encoder_hidden_size or dim} if config.peft_type == "PREFIX_TUNING" else {}
    name = config.base_model_name_or_path or getattr(mc, "name_or_path", "") or None
    return dataclasses.replace(config, num_layers=layers, token_dim=dim, num_attention_heads=heads,
                               num_transformer_submodules=1, base_model_name_or_path=name, **extra)
