r"""Prompt tuning and prefix tuning: training what the model attends to, not its weights.  (Chapter 10)

LoRA changes weights. These two methods freeze every weight of a causal LM and learn extra inputs:

* **Prompt tuning** (Lester et al. 2021) learns :math:`n` soft input embeddings
  :math:`P \in \mathbb{R}^{n \times d}` and prepends them to the token embeddings: the model reads
  :math:`[P; E(x)]`. The attention mask gains :math:`n` ones in front and the labels :math:`n` times
  ``-100`` (a virtual token is never predicted). It trains :math:`n d` parameters.
* **Prefix tuning** (Li & Liang 2021) learns for every layer :math:`l` the keys and values of :math:`n`
  virtual tokens, :math:`K^p_l, V^p_l \in \mathbb{R}^{n \times d_{kv}}`, handed to the model as its
  past key/values cache, so each head attends with
  :math:`\mathrm{softmax}(q [K^p_l; K_l]^\top / \sqrt{d_h}) [V^p_l; V_l]`. The prefix enters after the
  position encoding (it has no position; the real tokens' positions start at :math:`n`). It trains
  :math:`n \cdot L \cdot 2 \cdot d_{kv}` parameters, :math:`d_{kv}` = kv_heads × head_dim: with
  grouped-query attention only the key/value heads get a prefix, 11,520 per virtual token for
  SmolLM2-135M (30 × 2 × 3 × 64). ``prefix_projection`` reparametrises the prefix as PEFT does,
  :math:`W_2 \tanh(W_1 E + b_1) + b_2` on an embedding :math:`E \in \mathbb{R}^{n \times d}`.
  ``init_prefix_from_text`` starts a prefix as Li & Liang's "activations of real words": the keys and values
  the frozen model computes for a text, so that the model starts as the base model reading that text first.

The configs (``minilora.prompting_config``, importable from here too), the modules' names
(``prompt_encoder.<adapter>.embedding``, ``.transform``) and the files are PEFT's (``PromptTuningConfig``,
``PrefixTuningConfig``, ``task_type="CAUSAL_LM"``); ``save_adapter`` and ``load_adapter`` of ``minilora.io``
read and write them through ``minilora.prompting_io``. Every function that changes a model checks all of
its input first: a refused call leaves the model as it was (wrapping freezes the base model only once
everything, a ``TEXT`` initialisation's tokenizer included, has been checked).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import warnings

import torch
from torch import nn
from transformers import DynamicCache

from .errors import UnknownAdapterError
from .prompting_config import (
    PrefixTuningConfig,
    PromptTuningConfig,
    _PromptLearningConfig,
    check_adapter_name,
    fill_from_model,
)

__all__ = ["PromptTuningConfig", "PrefixTuningConfig", "PromptEmbedding", "PrefixEncoder", "PromptLearningModel",
           "add_prompt_learning", "init_prefix_from_text"]


def _token_ids(tokenizer, text: str, vocab: int, what: str) -> list[int]:
    """The ids of ``text``, checked to be some and to lie in the model's vocabulary of ``vocab`` tokens."""
    ids = tokenizer(text)["input_ids"]
    if not ids:
        raise ValueError(f"{what} gives no tokens; give a text to start from.")
    ids = [int(i) for i in ids]
    if not all(0 <= i < vocab for i in ids):
        raise ValueError(f"the tokenizer gives ids outside the model's vocabulary of {vocab} tokens "
                         f"({max(ids)}); use the model's own tokenizer.")
    return ids


class PromptEmbedding(nn.Module):
    """The soft prompt, PEFT's module of the same name: ``embedding.weight`` is (n, hidden)."""

    def __init__(self, config: PromptTuningConfig, word_embeddings: nn.Embedding):
        super().__init__()
        n = config.num_virtual_tokens * config.num_transformer_submodules
        self.embedding = nn.Embedding(n, config.token_dim)  # (n, hidden)
        if config.prompt_tuning_init == "TEXT" and not config.inference_mode:
            kwargs = {k: v for k, v in (config.tokenizer_kwargs or {}).items() if k != "trust_remote_code"}
            from transformers import AutoTokenizer  # here: it loads transformers.generation and, with it, scikit-learn
            try:
                tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path, **kwargs)
            except (OSError, ValueError) as e:
                raise ValueError(f"cannot load the tokenizer {str(config.tokenizer_name_or_path)!r} "
                                 f"(tokenizer_name_or_path): {e}. Pass the folder or name of the model's "
                                 "tokenizer.") from None
            ids = _token_ids(tokenizer, config.prompt_tuning_init_text, word_embeddings.num_embeddings,
                             "prompt_tuning_init_text")
            ids = (ids * math.ceil(n / len(ids)))[:n]  # repeated, then cut to n tokens
            ids = torch.tensor(ids, dtype=torch.long, device=word_embeddings.weight.device)
            self.embedding.weight = nn.Parameter(word_embeddings(ids).detach().clone().float())  # (n, hidden)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embedding(indices)  # (batch, n, hidden)


class PrefixEncoder(nn.Module):
    """The prefixes of every layer, PEFT's module of the same name: (n, layers · 2 · token_dim)."""

    def __init__(self, config: PrefixTuningConfig):
        super().__init__()
        n, dim, width = config.num_virtual_tokens, config.token_dim, config.num_layers * 2 * config.token_dim
        self.prefix_projection = config.prefix_projection and not config.inference_mode
        if self.prefix_projection:
            self.embedding = nn.Embedding(n, dim)  # (n, hidden)
            self.transform = nn.Sequential(nn.Linear(dim, config.encoder_hidden_size), nn.Tanh(),
                                           nn.Linear(config.encoder_hidden_size, width))
        else:
            self.embedding = nn.Embedding(n, width)  # (n, layers · 2 · token_dim)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        prefix = self.embedding(indices)
        return self.transform(prefix) if self.prefix_projection else prefix  # (batch, n, layers · 2 · token_dim)


def _checked(model: nn.Module, config: _PromptLearningConfig, adapter_name: str):
    """The config filled from ``model`` and the new prompt encoder, or an error; ``model`` is not changed."""
    if not isinstance(config, (PromptTuningConfig, PrefixTuningConfig)):
        raise TypeError(f"expected a PromptTuningConfig or PrefixTuningConfig, got {type(config).__name__}; "
                        "LoRA configs go to minilora.inject_lora.")
    if not isinstance(model, nn.Module) or not callable(getattr(model, "get_input_embeddings", None)) \
            or getattr(model, "config", None) is None:
        raise TypeError(f"prompt learning wraps a transformers causal LM (e.g. AutoModelForCausalLM."
                        f"from_pretrained(...)), got {type(model).__name__}.")
    if isinstance(model, PromptLearningModel):
        raise ValueError("this model already has a prompt; wrap the base model (model.base_model) instead.")
    check_adapter_name(adapter_name)
    config = dataclasses.replace(config)  # runs the config's checks again, on a copy: it may have been changed
    if config.peft_type == "PREFIX_TUNING" and any(getattr(m, "gradient_checkpointing", False)
                                                   for m in model.modules()):
        raise ValueError("prefix tuning hands the prefix over as a cache, which gradient checkpointing "
                         "does not keep; call model.gradient_checkpointing_disable() first.")
    config = fill_from_model(config, model)
    words = model.get_input_embeddings()
    if not isinstance(words, nn.Embedding):
        raise TypeError(f"the model's input embeddings are a {type(words).__name__}, not an nn.Embedding; "
                        "minilora's prompt learning needs a plain embedding table.")
    encoder = PromptEmbedding(config, words) if config.peft_type == "PROMPT_TUNING" else PrefixEncoder(config)
    return config, encoder.to(words.weight.device)


class PromptLearningModel(nn.Module):
    """A frozen causal LM with a trainable soft prompt or prefix in front of every input.

    ``forward`` and ``generate`` take what the base model's take, as PEFT's ``PeftModelForCausalLM``
    does; attributes it lacks (``config``, ``generation_config``, ...) are the base model's."""

    def __init__(self, model: nn.Module, config: _PromptLearningConfig, adapter_name: str = "default"):
        super().__init__()
        # Validate, then change: everything that can fail (the checks, reading the sizes, building the prompt,
        # a TEXT initialisation's tokenizer) happens before the base model is frozen.
        config, encoder = _checked(model, config, adapter_name)
        for p in model.parameters():
            p.requires_grad_(False)
        self.base_model = model
        self.peft_config = {adapter_name: config}
        self.active_adapter = adapter_name
        self.prompt_encoder = nn.ModuleDict({adapter_name: encoder})

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    @property
    def active_peft_config(self) -> _PromptLearningConfig:
        return self.peft_config[self.active_adapter]

    def get_prompt(self, batch_size: int) -> torch.Tensor | DynamicCache:
        """The soft prompt (batch, n, hidden), or the prefix as a cache of (batch, kv_heads, n, head_dim) per layer."""
        cfg, encoder = self.active_peft_config, self.prompt_encoder[self.active_adapter]
        tokens = torch.arange(cfg.num_virtual_tokens, device=encoder.embedding.weight.device)[None]  # (1, n)
        if cfg.peft_type == "PROMPT_TUNING":
            return encoder(tokens).repeat(batch_size, 1, 1)  # (batch, n, hidden)
        kv = encoder(tokens.expand(batch_size, -1)).to(self.base_model.dtype)  # (batch, n, layers · 2 · token_dim)
        kv = kv.view(batch_size, cfg.num_virtual_tokens, cfg.num_layers * 2, cfg.num_attention_heads,
                     cfg.token_dim // cfg.num_attention_heads)  # (batch, n, layers · 2, kv_heads, head_dim)
        kv = kv.permute(2, 0, 3, 1, 4)  # (layers · 2, batch, kv_heads, n, head_dim)
        return DynamicCache(kv.split(2))  # layer l: keys kv[2l], values kv[2l + 1]

    def _known(self, adapter_name: str | None) -> str:
        """``adapter_name`` (None: the active adapter) if the model has it, else ``UnknownAdapterError``."""
        if adapter_name is None:
            return self.active_adapter
        if not isinstance(adapter_name, str):
            raise TypeError(f"an adapter name is a string, got {adapter_name!r} ({type(adapter_name).__name__}).")
        if adapter_name not in self.peft_config:
            raise UnknownAdapterError(adapter_name, self.peft_config, "this prompt-learning model")
        return adapter_name

    def get_prompt_embedding_to_save(self, adapter_name: str | None = None) -> torch.Tensor:
        """What the file holds as ``prompt_embeddings``: (n, hidden), or the projected (n, layers · 2 · token_dim)."""
        encoder = self.prompt_encoder[self._known(adapter_name)]
        tokens = torch.arange(encoder.embedding.num_embeddings, device=encoder.embedding.weight.device)
        return encoder(tokens).detach().cpu()

    def _adjust(self, kwargs: dict, warn: bool) -> None:
        """PEFT's rule for the ids that the virtual tokens shift: a prefix moves the positions by n; prompt
        tuning drops them (the model then counts from 0 over prompt and input), and token type ids."""
        if kwargs.get("position_ids") is not None:
            if self.active_peft_config.peft_type == "PREFIX_TUNING":
                kwargs["position_ids"] = kwargs["position_ids"] + self.active_peft_config.num_virtual_tokens
            else:
                kwargs["position_ids"] = None
                if warn:
                    warnings.warn("prompt tuning ignores position_ids, as PEFT does.", stacklevel=3)
        if kwargs.pop("token_type_ids", None) is not None and warn:
            warnings.warn("prompt learning ignores token_type_ids, as PEFT does.", stacklevel=3)

    def forward(self, input_ids=None, attention_mask=None, labels=None, inputs_embeds=None, **kwargs):
        cfg, n = self.active_peft_config, self.active_peft_config.num_virtual_tokens
        if kwargs.get("past_key_values") is not None:
            raise ValueError("forward always starts from the prompt, so it takes no past_key_values; "
                             "for step-by-step decoding call generate(...).")
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        if attention_mask is not None:
            attention_mask = torch.cat((attention_mask.new_ones(batch, n), attention_mask), dim=1)  # (batch, n + len)
        self._adjust(kwargs, warn=True)
        if cfg.peft_type == "PREFIX_TUNING":
            return self.base_model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   labels=labels, past_key_values=self.get_prompt(batch), **kwargs)
        if inputs_embeds is None:
            inputs_embeds = self.base_model.get_input_embeddings()(input_ids)  # (batch, len, hidden)
        if labels is not None:  # the virtual tokens are never predicted
            labels = torch.cat((labels.new_full((batch, n), -100), labels), dim=1)  # (batch, n + len)
        prompts = self.get_prompt(batch).to(inputs_embeds.dtype)  # (batch, n, hidden)
        return self.base_model(inputs_embeds=torch.cat((prompts, inputs_embeds), dim=1),
                               attention_mask=attention_mask, labels=labels, **kwargs)

    def generate(self, *args, **kwargs):
        """The base model's ``generate``, with the prompt or prefix put in before the first step."""
        base = self.base_model
        own = vars(base).get("prepare_inputs_for_generation")
        base.prepare_inputs_for_generation = functools.partial(self._prepare_inputs_for_generation,
                                                               base.prepare_inputs_for_generation)
        try:
            return base.generate(*args, **kwargs)
        finally:
            if own is None:
                del base.prepare_inputs_for_generation
            else:
                base.prepare_inputs_for_generation = own

    def _prepare_inputs_for_generation(self, prepare, *args, **kwargs):
        cfg, inputs = self.active_peft_config, prepare(*args, **kwargs)
        ids, prefix = inputs["input_ids"], cfg.peft_type == "PREFIX_TUNING"
        if (mask := inputs.get("attention_mask")) is not None:
            if mask.dim() != 2:
                raise ValueError("prompt learning extends 2-d attention masks only; use the default dynamic cache.")
            inputs["attention_mask"] = torch.cat((mask.new_ones(ids.shape[0], cfg.num_virtual_tokens), mask), dim=1)
        self._adjust(inputs, warn=False)
        cache = inputs.get("past_key_values")
        if cache is None or cache.get_seq_length() == 0:  # the first step: the prompt goes in now
            if prefix:
                inputs["past_key_values"] = self.get_prompt(ids.shape[0])
            else:
                embeds = self.base_model.get_input_embeddings()(ids)  # (batch, len, hidden)
                prompts = self.get_prompt(ids.shape[0]).to(embeds.dtype)  # (batch, n, hidden)
                inputs["inputs_embeds"], inputs["input_ids"] = torch.cat((prompts, embeds), dim=1), None
        return inputs


def add_prompt_learning(model: nn.Module, config: _PromptLearningConfig,
                        adapter_name: str = "default") -> PromptLearningModel:
    """Wrap ``model`` (a causal LM) for prompt or prefix tuning and return the wrapper: the base is
    frozen, only the prompt trains. Everything is checked first: a refused call leaves ``model`` as it
    was (``TypeError`` for a wrong type, ``ValueError`` for a wrong value)."""
    return PromptLearningModel(model, config, adapter_name)


@torch.no_grad()
def init_prefix_from_text(model: PromptLearningModel, tokenizer, text: str,
                          adapter_name: str | None = None) -> PromptLearningModel:
    """Set a prefix to the keys and values that the frozen model computes for ``text`` (Li & Liang's
    initialisation with real words' activations; PEFT has none for prefixes), and return ``model``.

    The text's token ids are repeated or cut to ``num_virtual_tokens``, as PEFT's ``TEXT`` initialisation of
    prompt tuning does, so that the prefixed model starts exactly as the base model reading those tokens first.
    The base model computes them in eval mode (no dropout). Everything is checked before the prefix changes."""
    if not isinstance(model, PromptLearningModel):
        raise TypeError(f"init_prefix_from_text takes the model that add_prompt_learning returned, got "
                        f"{type(model).__name__}; wrap it first: add_prompt_learning(model, PrefixTuningConfig(n)).")
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be a tokenizer (e.g. AutoTokenizer.from_pretrained(...)), got "
                        f"{type(tokenizer).__name__}.")
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}.")
    name = model._known(adapter_name)
    cfg, encoder = model.peft_config[name], model.prompt_encoder[name]
    if cfg.peft_type != "PREFIX_TUNING" or encoder.prefix_projection:
        raise ValueError("init_prefix_from_text sets a prefix stored as it is used (PrefixTuningConfig without "
                         "prefix_projection); for prompt tuning use PromptTuningConfig(prompt_tuning_init='TEXT').")
    base, n = model.base_model, cfg.num_virtual_tokens
    ids = _token_ids(tokenizer, text, base.get_input_embeddings().num_embeddings, "the text")
    ids = torch.tensor((ids * math.ceil(n / len(ids)))[:n], device=encoder.embedding.weight.device)[None]  # (1, n)
    modes = [(m, m.training) for m in base.modules()]
    base.eval()
    try:
        cache = base(input_ids=ids, use_cache=True).past_key_values
    finally:
        for m, mode in modes:
            m.training = mode
    layers = [(layer.keys, layer.values) for layer in cache.layers]  # each (1, kv_heads, n, head_dim)
    if len(layers) != cfg.num_layers:
        raise ValueError(f"the model's cache has {len(layers)} layers, the prefix {cfg.num_layers}.")
    kv = torch.stack([t[0] for pair in layers for t in pair])  # (layers · 2, kv_heads, n, head_dim)
    kv = kv.permute(2, 0, 1, 3).reshape(n, -1)  # (n, layers · 2 · kv_heads · head_dim)
    if kv.shape != encoder.embedding.weight.shape:
        raise ValueError(f"the model's keys and values give a prefix of shape {tuple(kv.shape)}, the adapter holds "
                         f"{tuple(encoder.embedding.weight.shape)}: the adapter was made for another model.")
    encoder.embedding.weight.copy_(kv)
    return model
