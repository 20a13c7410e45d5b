r"""Mixed-adapter batches: row i of a batch uses its own adapter.  (Chapter 13)

A server holding one base model and many adapters gets requests for different adapters at once. Running
them one adapter at a time wastes the batch; merging cannot help, since each row needs a different
:math:`W_0 + s_i B_i A_i`. Instead, every LoRA layer computes the base output once for the whole batch and
adds each row's own update:

.. math::  h_b = W_0 x_b + s_{i_b} B_{i_b} A_{i_b} x_b, \qquad i_b = \text{adapter\_names}[b],

with ``"__base__"`` meaning no update. ``with mixed_batch(model, ["a", "__base__", "b"]):`` does this for
every forward pass inside it, ``generate`` included, as PEFT's ``model(**batch, adapter_names=[...])`` does.
Three kernels compute the same sum (chapter 13 measures them):

* ``"loop"`` (PEFT's ``_mixed_batch_forward``): for each adapter present, gather its rows, compute
  :math:`s B (A x)` through the adapter's variant, scatter the result back;
* ``"bgmv"`` and ``"sgmv"``: Punica's gathered and segmented products over the adapters' stacked factors
  (``minilora.punica``), on linear layers (LoRA embedding layers keep the loop, which is exact there too).

Saved modules (``modules_to_save``, e.g. a classifier head per adapter) run each adapter's own copy on its
rows, and the original module on the rows of ``"__base__"`` or of an adapter without a copy.

As in PEFT, a mixed batch is refused in training mode, with merged adapters and with DoRA; here also when
the adapter layers are switched off (the rows would silently get the base model), and for a batch whose
size is not ``len(adapter_names)``. Every check runs before anything changes; leaving the context puts
every layer back exactly as it was. The layers see the batch through one attribute, ``_mixed_batch``,
which holds the ``MixedBatch`` plan while the context is open and is ``None`` otherwise.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from .dora import DoraVariant
from .embedding import LoRAEmbedding
from .errors import UnknownAdapterError
from .layers import LoRALayer
from .merge import _check_switched_on, _require_lora, check_not_merged
from .modules_to_save import ModulesToSaveWrapper
from .punica import bgmv_expand, bgmv_shrink, segments, sgmv_expand, sgmv_shrink, stack_adapters
from .variants import LoraVariant

__all__ = ["mixed_batch", "MixedBatch", "BASE", "KERNELS"]

BASE = "__base__"  # PEFT's name for "no adapter on this row"
KERNELS = ("loop", "bgmv", "sgmv")


class MixedBatch:
    """The plan of one mixed batch: which rows use which adapter, and, for BGMV and SGMV, every linear
    layer's stacked factors (``punica.stack_adapters``, built once when the context opens)."""

    def __init__(self, names: list[str], kernel: str, layers: list[LoRALayer]):
        self.names, self.kernel = names, kernel
        self.adapters = list(dict.fromkeys(names))  # each adapter present, in order of first appearance
        index = torch.tensor([self.adapters.index(n) for n in names])  # (batch,) each row's adapter
        self.rows = {n: (index == k).nonzero().flatten() for k, n in enumerate(self.adapters)}
        self.index = index
        self.order = torch.argsort(index, stable=True)  # rows sorted by adapter (SGMV)
        self.segments = segments(index[self.order])  # (start, length, adapter) in rows
        self.layer_ids = {id(layer) for layer in layers}
        self.stacks = {}
        if kernel != "loop":
            self.stacks = {id(layer): stack_adapters(layer, self.adapters) for layer in layers
                           if not isinstance(layer, LoRAEmbedding)}

    def _check(self, module: nn.Module, x: torch.Tensor) -> None:
        if module.training:
            raise ValueError("mixed_batch is for inference: call model.eval() before the forward pass, as "
                             "PEFT refuses adapter_names= in training mode.")
        if len(x) != len(self.names):
            raise ValueError(f"adapter_names has {len(self.names)} names but this batch has {len(x)} rows: give one "
                             "name per row (with num_beams=k or num_return_sequences=k, repeat each name k times: "
                             "[n for n in names for _ in range(k)]).")

    def forward(self, layer: LoRALayer, x: torch.Tensor) -> torch.Tensor:
        """What ``layer`` computes for a mixed batch ``x`` (batch first)."""
        self._check(layer, x)
        result = layer.base_layer(x)
        if id(layer) in self.stacks:
            return self._punica(layer, x, result)
        for name, rows in self.rows.items():  # the loop: gather the rows, update, scatter back
            if name in layer.r:
                result[rows] = layer.lora_variant[name].forward(layer, name, x[rows], result[rows]).to(result.dtype)
        return result

    def _punica(self, layer: LoRALayer, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        A, B = self.stacks[id(layer)]  # (N, r, in), (N, out, r)
        per_row = x[0].numel() // x.shape[-1]  # tokens per row
        update = A.new_zeros(result.shape[:-1].numel(), B.shape[1])  # (T, out)
        shrunk = A.new_zeros(update.shape[0], A.shape[1])  # (T, r)
        if self.kernel == "bgmv":
            tokens = x.reshape(-1, x.shape[-1]).to(A.dtype)  # (T, in)
            idx = self.index.repeat_interleave(per_row)  # each token's adapter
            bgmv_shrink(tokens, A, shrunk, idx)
            bgmv_expand(shrunk, B, update, idx, add_inputs=True)
            return result + update.view_as(result).to(result.dtype)
        tokens = x[self.order].reshape(-1, x.shape[-1]).to(A.dtype)  # rows sorted by adapter, then flattened
        start, length, adapter = self.segments
        base = torch.tensor([n not in layer.r for n in self.adapters])
        adapter = torch.where(base[adapter], -1, adapter)  # no update for rows whose adapter is not here
        meta = (start * per_row, length * per_row, adapter)
        sgmv_shrink(tokens, A, shrunk, *meta)
        sgmv_expand(shrunk, B, update, *meta, add_inputs=True)
        unsorted = torch.empty_like(update).view(len(x), per_row, -1)
        unsorted[self.order] = update.view(len(x), per_row, -1)
        return result + unsorted.view_as(result).to(result.dtype)

    def forward_saved(self, wrapper: ModulesToSaveWrapper, *args, **kwargs):
        """What a saved module computes: each adapter's own copy on its rows, the original elsewhere."""
        if not args or not isinstance(args[0], torch.Tensor):
            raise TypeError("in a mixed batch a saved module must get its batch as the first positional argument.")
        x, rest = args[0], args[1:]
        self._check(wrapper, x)
        out = None
        for name, rows in self.rows.items():
            module = wrapper.modules_to_save[name] if name in wrapper.modules_to_save else wrapper.original_module
            y = module(x[rows], *rest, **kwargs)
            out = y.new_empty((len(x), *y.shape[1:])) if out is None else out
            out[rows] = y
        return out


def _check(model: nn.Module, adapter_names, kernel: str) -> list[LoRALayer]:
    layers = _require_lora(model)
    if not isinstance(adapter_names, (list, tuple)) or not all(isinstance(n, str) for n in adapter_names):
        raise TypeError(f"adapter_names must be a list with one adapter name (a string) per row of the batch, got "
                        f"{adapter_names!r}; e.g. ['a', '__base__', 'b']. For one adapter on every row use "
                        "minilora.set_adapter(model, name).")
    if not adapter_names:
        raise ValueError("adapter_names is empty: give one adapter name per row of the batch.")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}.")
    wrappers = [m for m in model.modules() if isinstance(m, ModulesToSaveWrapper)]
    known = list(dict.fromkeys([n for layer in layers for n in layer.adapters] +
                               [n for w in wrappers for n in w.modules_to_save]))
    for n in dict.fromkeys(adapter_names):
        if n != BASE and n not in known:
            raise UnknownAdapterError(n, known + [BASE])
    if model.training:
        raise ValueError("mixed_batch is for inference: call model.eval() first (PEFT refuses adapter_names= in "
                         "training mode).")
    check_not_merged(model, "a mixed batch")
    _check_switched_on(model, "a mixed batch")
    if any(getattr(m, "_mixed_batch", None) is not None for m in layers + wrappers):
        raise ValueError("this model is already inside a `with mixed_batch(...)` block; mixed batches do not nest.")
    for layer in layers:
        for n in set(adapter_names) & set(layer.r):
            variant = type(layer.lora_variant[n])
            if issubclass(variant, DoraVariant):
                raise ValueError(f"adapter {n!r} uses DoRA, which mixed batches do not support (as in PEFT); merge "
                                 "it into a copy of the model, or serve it in a batch of its own.")
            if kernel != "loop" and variant.forward is not LoraVariant.forward:
                raise ValueError(f"adapter {n!r} has its own forward ({variant.__name__}); kernel={kernel!r} "
                                 "computes plain LoRA only. Use kernel='loop'.")
    return layers


@contextmanager
def mixed_batch(model: nn.Module, adapter_names: Sequence[str] | MixedBatch,
                kernel: str = "loop") -> Iterator[MixedBatch]:
    """Inside ``with mixed_batch(model, adapter_names):`` row i of every forward pass (and of ``generate``)
    uses adapter ``adapter_names[i]``; ``"__base__"`` rows use no adapter. ``kernel`` is ``"loop"`` (PEFT's),
    ``"bgmv"`` or ``"sgmv"`` (Punica's); all three compute the same numbers. The model must be in eval mode
    with no merged adapter. Yields the ``MixedBatch`` plan; on leaving, the model is as it was.

    A plan yielded before can be passed instead of the names (its kernel is used), to skip building the
    stacks again, as a server keeps its stacked adapters between batches; reuse it only while the
    adapters' weights are unchanged."""
    reused = adapter_names if isinstance(adapter_names, MixedBatch) else None
    if reused is not None:
        adapter_names, kernel = reused.names, reused.kernel
    layers = _check(model, adapter_names, kernel)
    if reused is not None and reused.layer_ids != {id(layer) for layer in layers}:
        raise ValueError("this MixedBatch plan was built for another model (or before layers were added); "
                         "open mixed_batch(model, names) to build a new one.")
    plan = reused or MixedBatch(list(adapter_names), kernel, layers)
    modules = layers + [m for m in model.modules() if isinstance(m, ModulesToSaveWrapper)]
    for m in modules:
        m._mixed_batch = plan
    try:
        yield plan
    finally:
        for m in modules:
            m._mixed_batch = None
