r"""Which modules a ``LoRAConfig`` selects in a model, found before anything changes.  (Chapter 04)

``inject_lora`` changes only what these functions name, and calls them first, so a config that
selects nothing (or something impossible) is refused while the model is still untouched.

* ``target_modules`` (the layers that get a low-rank update :math:`W_0 + \frac{\alpha}{r} BA`):
  a list entry selects a module whose name equals it or ends with ``"." + entry``; a string is a
  regular expression that must match the *whole* name (``re.fullmatch``); ``"all-linear"`` is every
  linear layer except the output head (``HEAD_NAMES``, ``get_output_embeddings``), as in PEFT.
  ``exclude_modules`` then removes names by the same rules.
* ``modules_to_save`` (modules trained whole, one copy per adapter: ``minilora.modules_to_save``):
  each entry must select at least one module. A module is *either* adapted by an update *or*
  copied whole: a saved module may not be, contain or lie inside a LoRA target or LoRA layer, nor
  contain another saved module.

Only layers LoRA can wrap are targets: ``nn.Linear``, transformers' ``Conv1D``, ``nn.Embedding`` and
NF4-quantized linears (chapter 08), or LoRA layers already there (a second adapter on the same layer).
"""
from __future__ import annotations

import difflib

from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import DEFAULT_TARGETS, LoRAConfig, name_matches
from .embedding import LoRAEmbedding
from .layers import LoRALayer
from .modules_to_save import ModulesToSaveWrapper

__all__ = ["HEAD_NAMES", "output_head_names", "resolve_targets", "resolve_modules_to_save"]

#: Names of output heads: "all-linear" leaves them out, as PEFT does.
HEAD_NAMES = ("lm_head", "classifier", "score", "qa_outputs", "cls")


def output_head_names(model: nn.Module) -> set[str]:
    """Names of the output head(s): the LM head (``get_output_embeddings``) and modules named as in
    ``HEAD_NAMES``, with everything inside them."""
    heads = set()
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    for name, module in model.named_modules():
        if (out is not None and module is out) or name.rsplit(".", 1)[-1] in HEAD_NAMES \
                or name.split(".")[0] in HEAD_NAMES:
            heads.add(name)
    return heads


def _outer_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``named_modules()`` without the insides of LoRA layers and saved modules (their base layers,
    adapter weights and copies are not the model's own modules)."""
    out, skip = [], []
    for name, module in model.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue
        if isinstance(module, (LoRALayer, ModulesToSaveWrapper)):
            skip.append(name)
        out.append((name, module))
    return out


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Layers LoRA can wrap (or has wrapped)."""
    return [(n, m) for n, m in _outer_modules(model)  # is_quantized: an NF4 linear (chapter 08), for QLoRA
            if isinstance(m, (nn.Linear, nn.Embedding, Conv1D, LoRALayer)) or getattr(m, "is_quantized", False)]


def short_names(names: list[str]) -> str:
    """``query, key, value, attention.output.dense, ...``: each layer's name after its block
    number, shortened to the fewest trailing parts that still tell it from the others."""
    full: dict[str, None] = {}
    for n in names:
        parts = n.split(".")
        digits = [i for i, p in enumerate(parts) if p.isdigit()]
        full[".".join(parts[digits[-1] + 1:]) if digits else n] = None
    out = []
    for s in full:
        parts = s.split(".")
        for k in range(1, len(parts) + 1):
            tail = ".".join(parts[-k:])
            if not any(o != s and ".".join(o.split(".")[-k:]) == tail for o in full):
                break
        out.append(tail)
    return ", ".join(out)


def _is_embedding(module: nn.Module) -> bool:
    return isinstance(module, (nn.Embedding, LoRAEmbedding))


def resolve_targets(model: nn.Module, config: LoRAConfig) -> list[str]:
    """The names of the modules ``config`` selects in ``model`` (raises if there are none)."""
    spec = config.target_modules
    if spec is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGETS:
            raise ValueError(f"target_modules=None has no default for model type {model_type!r}; "
                             "name the layers, e.g. target_modules=['q_proj', 'v_proj'] or 'all-linear'.")
        spec = DEFAULT_TARGETS[model_type]
    cands = _candidates(model)
    if spec == "all-linear":
        heads = output_head_names(model)
        chosen = [n for n, m in cands if not _is_embedding(m) and n not in heads]
    else:
        chosen = [n for n, _ in cands if name_matches(n, spec)]
    matched = len(chosen)
    if config.exclude_modules is not None:
        chosen = [n for n in chosen if not name_matches(n, config.exclude_modules)]
    if chosen:
        return chosen
    if matched:
        raise ValueError(f"target_modules={spec!r} matched {matched} layers, but exclude_modules="
                         f"{config.exclude_modules!r} excluded every one of them; narrow exclude_modules.")
    linear = [n for n, m in cands if not _is_embedding(m)]
    hint = (" A string is a regular expression that must match the *whole* module name (re.fullmatch), "
            "e.g. r'.*\\.(query|value)'; or pass a list of names." if isinstance(spec, str) else "")
    raise ValueError(f"target_modules={spec!r} matched nothing; linear layers in this model: {short_names(linear)}. "
                     f"Embeddings: {short_names([n for n, m in cands if _is_embedding(m)])}." + hint)


def _inside(inner: str, outer: str) -> bool:
    return inner.startswith(outer + ".")


def resolve_modules_to_save(model: nn.Module, config: LoRAConfig, targets: list[str] | None = None) -> list[str]:
    """The names of the modules ``config.modules_to_save`` selects in ``model`` (``[]`` for none).
    Raises ``ValueError`` for an entry that selects nothing (with the closest names), and for a
    selected module that is, contains or lies inside a LoRA target (``targets``, default
    ``resolve_targets(model, config)``) or a LoRA layer already there, or contains another saved module."""
    if not config.modules_to_save:
        return []
    targets = resolve_targets(model, config) if targets is None else targets
    outer = [(n, m) for n, m in _outer_modules(model) if n]
    lora = [n for n, m in outer if isinstance(m, LoRALayer)]
    wrapped = [n for n, m in outer if isinstance(m, ModulesToSaveWrapper)]
    chosen: dict[str, str] = {}  # name -> the entry that selected it
    for key in config.modules_to_save:
        found = [n for n, _ in outer if name_matches(n, [key])]
        if not found:
            close = difflib.get_close_matches(key.rsplit(".", 1)[-1], {n.rsplit(".", 1)[-1] for n, _ in outer}, n=3)
            raise ValueError(f"modules_to_save={key!r} matched no module" + (f"; did you mean {close}?" if close else
                             "") + f" Top-level modules: {[n for n, _ in model.named_children()]}. An entry selects "
                             "a module whose name equals it or ends with '.' + entry.")
        for n in found:
            chosen.setdefault(n, key)
    for n, key in chosen.items():
        for t in dict.fromkeys(list(targets) + lora):
            what = "a LoRA target (target_modules)" if t in targets else "a LoRA layer of another adapter"
            if t == n or _inside(n, t):
                raise ValueError(f"modules_to_save={key!r} selects {n!r}, which is {what if t == n else 'inside ' + t}:"
                                 " a module is either adapted by a low-rank update or trained whole as a copy, not "
                                 f"both. Take it out of one of them, e.g. exclude_modules=[{n!r}] to keep the copy.")
            if _inside(t, n):
                raise ValueError(f"modules_to_save={key!r} selects {n!r}, which contains {t!r}, {what}: a module "
                                 "trained whole cannot also hold a low-rank update. Exclude the inner layers "
                                 f"(exclude_modules=[...]) or save a smaller module than {n!r}.")
        for other in list(chosen) + wrapped:
            if _inside(other, n):
                raise ValueError(f"modules_to_save={key!r} selects {n!r}, which contains the saved module {other!r}; "
                                 "a copy inside a copy cannot be saved. Keep only one of the two in modules_to_save.")
    return list(chosen)
