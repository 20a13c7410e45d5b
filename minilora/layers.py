r"""LoRA layers: a frozen base layer plus a trainable low-rank update.  (Chapter 02)

A linear layer computes :math:`h = W_0 x + b`. LoRA freezes :math:`W_0` (shape d_out x d_in)
and learns a low-rank update instead:

.. math::   h = W_0 x + b + \frac{\alpha}{r} B A x

with ``A`` of shape (r, d_in) and ``B`` of shape (d_out, r). Only ``r * (d_in + d_out)``
numbers are trained instead of ``d_in * d_out``.

* ``A`` starts kaiming-uniform (a = sqrt 5), ``B`` starts at zero, so at initialisation
  ``B A = 0`` and the wrapped layer computes exactly what the base layer did.
* ``scaling = alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA, chapter 09) keeps the size of
  the update roughly independent of the rank you choose.
* Dropout, when used, acts on the input of the LoRA path only.
* Merging folds the update into the weight, ``W = W_0 + scaling * B A``, so inference costs
  exactly what the base layer costs. Unmerging subtracts it again.

Several named adapters can live in one layer (chapter 06): ``lora_A`` and ``lora_B`` are
dictionaries keyed by adapter name, as in PEFT, and the output adds the delta of every *active*
adapter. ``LoRAEmbedding`` applies the same idea to ``nn.Embedding`` with PEFT's layout
``lora_embedding_A`` (r, num_embeddings) and ``lora_embedding_B`` (embedding_dim, r).
"""
from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

try:  # GPT-2 and friends store linear weights transposed, as (in, out).
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency of the course
    Conv1D = ()  # type: ignore[assignment]

INITS = ("kaiming", "gaussian")


def _check_args(r: int, alpha: float, dropout: float, init: str) -> None:
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"r must be a positive integer (the rank of the update), got {r!r}.")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
        raise ValueError(f"alpha must be a positive number (scaling = alpha / r), got {alpha!r}.")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}.")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}.")


def lora_scaling(r: int, alpha: float, use_rslora: bool = False) -> float:
    """``alpha / r``, or ``alpha / sqrt(r)`` for rank-stabilised LoRA (rsLoRA)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


class _LoRAMixin:
    """What LoRALinear and LoRAEmbedding share: adapter bookkeeping, merge, unmerge, disable."""

    base: nn.Module
    _a: str  # attribute names of the A and B dictionaries
    _b: str

    def _init_bookkeeping(self) -> None:
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.use_rslora: dict[str, bool] = {}
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disabled = False

    # ----- adapters -------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        """Names of every adapter held by this layer."""
        return list(getattr(self, self._a).keys())

    def _check_has(self, name: str) -> None:
        if name not in self.adapters:
            raise KeyError(f"no adapter named {name!r} in this layer; it has {self.adapters}.")

    def set_adapter(self, names: str | Sequence[str]) -> None:
        """Make ``names`` the active adapters (several are summed, i.e. stacked).

        Active adapters are trainable, the others are frozen, as in PEFT."""
        names = [names] if isinstance(names, str) else list(names)
        for n in names:
            self._check_has(n)
        if self.merged_adapters:
            raise RuntimeError(
                f"adapters {self.merged_adapters} are merged into the weight; unmerge() before switching."
            )
        self.active_adapters = names
        for n in self.adapters:
            for p in (getattr(self, self._a)[n], getattr(self, self._b)[n]):
                p.requires_grad_(n in names)

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` from this layer (unmerge first if it is merged)."""
        self._check_has(name)
        if name in self.merged_adapters:
            raise RuntimeError(f"adapter {name!r} is merged into the weight; unmerge() before deleting it.")
        for d in (getattr(self, self._a), getattr(self, self._b), self.lora_dropout):
            del d[name]
        for d in (self.r, self.lora_alpha, self.scaling, self.use_rslora):
            del d[name]
        if name in self.active_adapters:
            self.active_adapters.remove(name)

    def _resolve(self, name: str | None) -> str:
        """``name``, or by default the first active adapter (or the first adapter)."""
        if name is None:
            name = self.active_adapters[0] if self.active_adapters else self.adapters[0]
        self._check_has(name)
        return name

    def get_lora_AB(self, name: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The (A, B) parameters of adapter ``name`` (default: the first active one)."""
        name = self._resolve(name)
        return getattr(self, self._a)[name], getattr(self, self._b)[name]

    def _register(self, name: str, r: int, alpha: float, use_rslora: bool) -> None:
        """Record the hyper-parameters of a freshly added adapter; the first one becomes active."""
        self.r[name], self.lora_alpha[name], self.use_rslora[name] = r, alpha, use_rslora
        self.scaling[name] = lora_scaling(r, alpha, use_rslora)
        self.set_adapter(self.active_adapters or [name])

    # ----- merge ----------------------------------------------------------------------------
    @property
    def merged(self) -> bool:
        """True when some adapter's update has been folded into the base weight."""
        return bool(self.merged_adapters)

    def _base_weight(self) -> torch.Tensor:
        if getattr(self.base, "is_quantized", False):
            raise RuntimeError(
                "cannot merge a LoRA update into a quantized (NF4) base weight: the sum would have to be "
                "re-quantized and the adapter's precision lost. Dequantize the base first "
                "(see chapter 08), or keep the adapter unmerged."
            )
        return self.base.weight

    def merge(self, names: Sequence[str] | None = None) -> None:
        """Fold the update of each active adapter into the base weight: ``W += delta_weight()``."""
        names = list(self.active_adapters if names is None else names)
        todo = [n for n in names if n not in self.merged_adapters]
        if not todo:
            warnings.warn(f"already merged: {names or 'no active adapter'}; nothing to do.", stacklevel=2)
            return
        weight = self._base_weight()
        with torch.no_grad():
            for n in todo:
                self._check_has(n)
                weight.data += self.delta_weight(n).to(weight.dtype)
                self.merged_adapters.append(n)

    def unmerge(self) -> None:
        """Subtract every merged update again, restoring the base weight."""
        if not self.merged_adapters:
            warnings.warn("not merged; nothing to unmerge.", stacklevel=2)
            return
        weight = self._base_weight()
        with torch.no_grad():
            while self.merged_adapters:
                n = self.merged_adapters.pop()
                weight.data -= self.delta_weight(n).to(weight.dtype)

    @contextmanager
    def disable(self) -> Iterator[None]:
        """Temporarily compute the base layer alone (merged updates are taken out and put back)."""
        was_merged = list(self.merged_adapters)
        if was_merged:
            self.unmerge()
        old, self.disabled = self.disabled, True
        try:
            yield
        finally:
            self.disabled = old
            if was_merged:
                self.merge(was_merged)

    def _live_adapters(self) -> list[str]:
        """Adapters whose update must be added in forward (active, not merged, not disabled)."""
        if self.disabled:
            return []
        return [n for n in self.active_adapters if n not in self.merged_adapters]


class LoRALinear(_LoRAMixin, nn.Module):
    """``base(x) + scaling * B(A(dropout(x)))`` around a frozen ``nn.Linear`` or ``Conv1D``.

    Args:
        base: the layer to adapt; kept as ``self.base`` and frozen.
        r: rank of the update. alpha: scaling numerator (scaling = alpha / r).
        dropout: dropout probability on the LoRA path's input.
        use_rslora: scaling = alpha / sqrt(r) instead.
        init: "kaiming" (A kaiming-uniform, a=sqrt 5) or "gaussian" (A ~ N(0, std=1/r), as PEFT).
        adapter_name: name of this first adapter; more can be added with ``add_adapter``.
    """

    _a, _b = "lora_A", "lora_B"

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, init: str = "kaiming", adapter_name: str = "default"):
        super().__init__()
        if isinstance(base, _LoRAMixin):
            raise ValueError("this layer already has LoRA; add another adapter with .add_adapter(name, ...).")
        if isinstance(base, nn.Linear) or getattr(base, "is_quantized", False):
            self.fan_in_fan_out = False  # weight stored (out, in)
            self.in_features, self.out_features = base.in_features, base.out_features
        elif Conv1D and isinstance(base, Conv1D):
            self.fan_in_fan_out = True  # weight stored (in, out)
            self.in_features, self.out_features = base.weight.shape
        else:
            raise ValueError(
                f"LoRALinear wraps nn.Linear or transformers' Conv1D, got {type(base).__name__}. "
                "For nn.Embedding use LoRAEmbedding."
            )
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()
        self._init_bookkeeping()
        self.add_adapter(adapter_name, r, alpha, dropout, use_rslora, init)

    def add_adapter(self, name: str, r: int, alpha: float, dropout: float = 0.0,
                    use_rslora: bool = False, init: str = "kaiming") -> None:
        """Add adapter ``name`` (B = 0: a no-op at first). Only the first adapter starts active;
        choose others with ``set_adapter``, which also makes them trainable."""
        _check_args(r, alpha, dropout, init)
        if name in self.lora_A:
            raise ValueError(f"adapter {name!r} already exists in this layer; pick another name.")
        if r >= min(self.in_features, self.out_features):
            warnings.warn(
                f"r={r} >= min(in={self.in_features}, out={self.out_features}): the update is no longer "
                "low rank, and LoRA trains more parameters than a full fine-tune of this layer would.",
                stacklevel=2,
            )
        ref = next(self.base.parameters(), None)  # an NF4 base may hold only buffers (its packed weight)
        ref = ref if ref is not None else next(self.base.buffers(), None)
        device = ref.device if ref is not None else None
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        A = torch.empty(r, self.in_features, device=device, dtype=dtype)
        if init == "kaiming":
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        else:
            nn.init.normal_(A, std=1 / r)
        self.lora_A[name] = nn.Parameter(A)
        self.lora_B[name] = nn.Parameter(torch.zeros(self.out_features, r, device=device, dtype=dtype))
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._register(name, r, alpha, use_rslora)

    def delta_weight(self, name: str | None = None) -> torch.Tensor:
        """``scaling * B @ A`` in the base layer's own weight layout, so a merge is ``W += delta``."""
        name = self._resolve(name)
        A, B = self.get_lora_AB(name)
        delta = (B @ A) * self.scaling[name]
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        for n in self._live_adapters():
            A, B = self.lora_A[n], self.lora_B[n]
            h = self.lora_dropout[n](x.to(A.dtype))
            result = result + (F.linear(F.linear(h, A), B) * self.scaling[n]).to(result.dtype)
        return result

    def extra_repr(self) -> str:
        rs = ", ".join(f"{n}: r={self.r[n]} alpha={self.lora_alpha[n]}" for n in self.adapters)
        return f"in={self.in_features}, out={self.out_features}, adapters=[{rs}], active={self.active_adapters}"


class LoRAEmbedding(_LoRAMixin, nn.Module):
    """LoRA for ``nn.Embedding``: ``E[x] + scaling * (A^T[x]) B^T``.

    Layout as PEFT: ``lora_embedding_A`` (r, num_embeddings) starts at zero and
    ``lora_embedding_B`` (embedding_dim, r) starts N(0, 1), so the layer starts as the identity.
    Dropout is not applied on embeddings (a lookup has no input features to drop), as in PEFT.
    """

    _a, _b = "lora_embedding_A", "lora_embedding_B"

    def __init__(self, base: nn.Embedding, r: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, init: str = "kaiming", adapter_name: str = "default"):
        super().__init__()
        if not isinstance(base, nn.Embedding):
            raise ValueError(f"LoRAEmbedding wraps nn.Embedding, got {type(base).__name__}; "
                             "for linear layers use LoRALinear.")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()  # kept for a uniform interface; always identity
        self._init_bookkeeping()
        self.add_adapter(adapter_name, r, alpha, dropout, use_rslora, init)

    def add_adapter(self, name: str, r: int, alpha: float, dropout: float = 0.0,
                    use_rslora: bool = False, init: str = "kaiming") -> None:
        """Add adapter ``name`` (A = 0: a no-op at first); activate it with ``set_adapter``."""
        _check_args(r, alpha, dropout, init)
        if name in self.lora_embedding_A:
            raise ValueError(f"adapter {name!r} already exists in this layer; pick another name.")
        if dropout > 0:
            warnings.warn("dropout is not applied to LoRAEmbedding (as in PEFT); it has no effect here.",
                          stacklevel=2)
        if init != "kaiming":
            warnings.warn(f"init={init!r} has no effect on LoRAEmbedding: as in PEFT it always starts with "
                          "A = 0 and B ~ N(0, 1).", stacklevel=2)
        if r >= min(self.num_embeddings, self.embedding_dim):
            warnings.warn(f"r={r} >= min{(self.num_embeddings, self.embedding_dim)}: no longer low rank.",
                          stacklevel=2)
        w = self.base.weight
        dtype = w.dtype if w.is_floating_point() else torch.float32
        self.lora_embedding_A[name] = nn.Parameter(torch.zeros(r, self.num_embeddings, device=w.device, dtype=dtype))
        B = torch.empty(self.embedding_dim, r, device=w.device, dtype=dtype)
        nn.init.normal_(B)
        self.lora_embedding_B[name] = nn.Parameter(B)
        self.lora_dropout[name] = nn.Identity()
        self._register(name, r, alpha, use_rslora)

    def delta_weight(self, name: str | None = None) -> torch.Tensor:
        """``scaling * (B @ A)^T``, shaped like the embedding table (num_embeddings, dim)."""
        name = self._resolve(name)
        A, B = self.get_lora_AB(name)
        return (B @ A).T * self.scaling[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        e = self.base
        for n in self._live_adapters():
            A, B = self.lora_embedding_A[n], self.lora_embedding_B[n]
            after_A = F.embedding(x, A.T, e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq, e.sparse)
            result = result + (after_A @ B.T * self.scaling[n]).to(result.dtype)
        return result

    def extra_repr(self) -> str:
        rs = ", ".join(f"{n}: r={self.r[n]} alpha={self.lora_alpha[n]}" for n in self.adapters)
        return (f"num_embeddings={self.num_embeddings}, dim={self.embedding_dim}, adapters=[{rs}], "
                f"active={self.active_adapters}")


LoRALayer = (LoRALinear, LoRAEmbedding)
"""The LoRA layer types, for ``isinstance`` checks."""
