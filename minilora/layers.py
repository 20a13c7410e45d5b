r"""LoRA layers: a frozen base layer plus a trainable low-rank update.  (Chapter 02)

A linear layer computes :math:`h = W_0 x + b`. LoRA (Hu et al. 2021, section 4.1) freezes
:math:`W_0 \in \mathbb{R}^{d_{out} \times d_{in}}` and learns a low-rank update instead:

.. math::   h = W_0 x + b + \frac{\alpha}{r} B A x, \qquad A \in \mathbb{R}^{r \times d_{in}},\;
            B \in \mathbb{R}^{d_{out} \times r},

so only :math:`r (d_{in} + d_{out})` numbers train instead of :math:`d_{in} d_{out}`.

* ``A`` starts kaiming-uniform (a = sqrt 5) and ``B`` at zero, so ``B A = 0`` and the wrapped layer
  computes exactly what the base layer did.
* ``scaling = lora_alpha / r`` (or ``lora_alpha / sqrt(r)`` with rsLoRA, chapter 09) keeps the size
  of an update roughly independent of the rank.
* Dropout acts on the input of the LoRA path only.
* Merging folds the update into the weight, :math:`W = W_0 + \frac{\alpha}{r} B A`, so inference
  costs what the base layer costs; unmerging subtracts it again.

As in PEFT, the wrapped layer is ``base_layer``, and every adapter is kept by name (chapter 06):
``lora_A[name]`` and ``lora_B[name]`` are ``nn.Linear`` layers without bias, whose weights are A
(r, in) and B (out, r). The output adds the update of every *active* adapter. Seeded alike,
minilora and PEFT draw the same initial adapters: they create and initialise the tensors in the
same order. ``LoRALayer`` is the base class that ``minilora.embedding.LoRAEmbedding`` shares.

Chapter 09's variants of a linear layer live in their own modules: ``use_dora=True`` adds a magnitude
vector per adapter (``lora_magnitude_vector``, ``minilora.dora``), and ``init_lora_weights="pissa"``
starts A and B from the top-r SVD of the base weight and takes that part out of it (``minilora.pissa``).
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Sequence

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D  # GPT-2's linear layer, weight stored (in, out)

from .config import check_lora_args, lora_scaling
from .dora import dora_forward, dora_init, dora_merge, dora_unmerge, refuse_dora
from .pissa import check_pissa, is_pissa, pissa_init

__all__ = ["LoRALayer", "LoRALinear"]


class LoRALayer(nn.Module):
    """What every LoRA layer shares (PEFT's ``LoraLayer``): the frozen ``base_layer``, the
    hyper-parameters per adapter (``r``, ``lora_alpha``, ``scaling``, ``use_rslora``: dicts keyed by
    adapter name), which adapters are active or merged, merging, and switching adapters off.

    ``adapter_layer_names`` names the per-adapter containers that hold trainable weights."""

    adapter_layer_names: tuple[str, ...] = ()
    other_param_names: tuple[str, ...] = ("r", "lora_alpha", "scaling", "lora_dropout", "use_rslora")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.refuse_lora(base_layer)
        self.base_layer = base_layer.requires_grad_(False)
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.use_rslora: dict[str, bool] = {}
        self.lora_dropout = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self._disable_adapters = False

    @staticmethod
    def refuse_lora(base_layer: nn.Module) -> None:
        if isinstance(base_layer, LoRALayer):
            raise ValueError("this layer already has LoRA; add another adapter with .update_layer(name, ...).")

    # ----- which adapters --------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        """Names of every adapter held by this layer, in the order they were added."""
        return list(self.r)

    @property
    def active_adapter(self) -> str:
        """The first active adapter."""
        return self.active_adapters[0]

    def _check_has(self, name: str) -> None:
        if name not in self.r:
            raise KeyError(f"no adapter named {name!r} in this layer; it has {self.adapters}.")

    def _resolve(self, name: str | None) -> str:
        name = name if name is not None else (self.active_adapters or self.adapters)[0]
        self._check_has(name)
        return name

    def set_adapter(self, adapter_names: str | Sequence[str]) -> None:
        """Make ``adapter_names`` the active adapters (several are summed: stacked). As in PEFT the
        active adapters are trainable and the others frozen."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for n in names:
            self._check_has(n)
        if self.merged_adapters:
            raise RuntimeError(f"adapters {self.merged_adapters} are merged into the weight; unmerge() before "
                               "switching.")
        self.active_adapters = names
        for n in self.adapters:
            for container in self.adapter_layer_names:
                if n in getattr(self, container):  # a DoRA magnitude exists for DoRA adapters only
                    getattr(self, container)[n].requires_grad_(n in names)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove adapter ``adapter_name`` from this layer (unmerge it first if it is merged)."""
        self._check_has(adapter_name)
        if adapter_name in self.merged_adapters:
            raise RuntimeError(f"adapter {adapter_name!r} is merged into the weight; unmerge() before deleting it.")
        for container in self.adapter_layer_names + ("lora_dropout",):
            if adapter_name in getattr(self, container):
                del getattr(self, container)[adapter_name]
        for values in (self.r, self.lora_alpha, self.scaling, self.use_rslora):
            del values[adapter_name]
        if adapter_name in self.active_adapters:
            self.active_adapters.remove(adapter_name)

    @property
    def disable_adapters(self) -> bool:
        """True while the layer computes its base layer alone (``enable_adapters(False)``)."""
        return self._disable_adapters

    def enable_adapters(self, enabled: bool) -> None:
        """Switch the LoRA path on (True) or off (False, the base layer alone). Merged updates are in
        the weight itself: ``minilora.disable_adapter(model)`` unmerges them for the duration."""
        self._disable_adapters = not enabled

    def get_base_layer(self) -> nn.Module:
        return self.base_layer

    def factors(self, adapter: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The trainable tensors ``(A, B)`` of ``adapter`` (default: the first active one):
        A is (r, in), B is (out, r), whatever container holds them."""
        adapter = self._resolve(adapter)
        A, B = (getattr(self, c)[adapter] for c in self.adapter_layer_names[:2])
        return (A.weight if isinstance(A, nn.Module) else A), (B.weight if isinstance(B, nn.Module) else B)

    def _live_adapters(self) -> list[str]:
        """Adapters whose update forward must add: active, not merged, not disabled."""
        if self._disable_adapters:
            return []
        return [n for n in self.active_adapters if n not in self.merged_adapters]

    # ----- adding an adapter -----------------------------------------------------------------
    def _check_new(self, name: str, r: int, lora_alpha: float, lora_dropout: float, init_lora_weights,
                   use_rslora: bool, dims: tuple[int, int], use_dora: bool = False) -> None:
        check_lora_args(r, lora_alpha, lora_dropout, init_lora_weights, use_rslora, use_dora)
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"an adapter name must be a non-empty string without dots, got {name!r}.")
        if hasattr(nn.ModuleDict(), name):  # adapters are keys of ModuleDicts, whose methods they would shadow
            raise ValueError(f"{name!r} is the name of an nn.Module attribute; choose another adapter name.")
        if name in self.r:
            raise ValueError(f"adapter {name!r} already exists in this layer; pick another name.")
        if r >= min(dims):
            warnings.warn(f"r={r} >= min{dims}: the update is no longer low rank, and LoRA trains more "
                          "parameters than a full fine-tune of this layer would.", stacklevel=3)

    def _factory(self) -> dict:
        """Device and dtype for new adapter weights: the base layer's device; fp32 (or fp64 for an
        fp64 base), also on a 16-bit or 4-bit base, as PEFT's default ``autocast_adapter_dtype``."""
        ref = next(itertools.chain(self.base_layer.parameters(), self.base_layer.buffers()), None)
        weight = getattr(self.base_layer, "weight", None)
        dtype = weight.dtype if isinstance(weight, torch.Tensor) and weight.dtype == torch.float64 else torch.float32
        return {"device": ref.device if ref is not None else None, "dtype": dtype}

    def _register(self, name: str, r: int, lora_alpha: float, use_rslora: bool) -> None:
        self.r[name], self.lora_alpha[name], self.use_rslora[name] = r, lora_alpha, use_rslora
        self.scaling[name] = lora_scaling(r, lora_alpha, use_rslora)
        self.set_adapter(self.active_adapters or [name])  # the first adapter becomes active

    # ----- merging ---------------------------------------------------------------------------
    @property
    def merged(self) -> bool:
        """True when some adapter's update has been folded into the base weight."""
        return bool(self.merged_adapters)

    def _base_weight(self) -> torch.Tensor:
        if getattr(self.base_layer, "is_quantized", False):
            raise RuntimeError("cannot merge a LoRA update into a quantized (NF4) base weight: the sum would have to "
                               "be re-quantized and the adapter's precision lost. Dequantize the base first "
                               "(LinearNF4.to_linear, chapter 08), or keep the adapter unmerged.")
        return self.base_layer.weight

    def get_delta_weight(self, adapter: str | None = None) -> torch.Tensor:
        """``scaling * B @ A`` in the base layer's own weight layout, so that a merge is ``W += delta``."""
        raise NotImplementedError

    def _merged(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` with adapter ``name`` merged into it (a new tensor)."""
        return weight + self.get_delta_weight(name).to(weight.dtype)

    def _unmerged(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` with the merged adapter ``name`` taken out again (a new tensor)."""
        return weight - self.get_delta_weight(name).to(weight.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: Sequence[str] | None = None) -> None:
        """Fold the update of each adapter (default: the active ones) into the base weight.
        ``safe_merge`` checks the result for NaN and inf before writing it, as in PEFT."""
        names = list(self.active_adapters if adapter_names is None else adapter_names)
        todo = [n for n in names if n not in self.merged_adapters]
        if not todo:
            warnings.warn(f"already merged: {names or 'no active adapter'}; nothing to do.", stacklevel=2)
            return
        for n in todo:
            self._check_has(n)
        weight = self._base_weight()
        with torch.no_grad():
            for n in todo:
                new = self._merged(n, weight)
                if safe_merge and not torch.isfinite(new).all():
                    raise ValueError(f"NaNs detected in the merged weights. The adapter {n!r} seems to be broken.")
                weight.copy_(new)
                self.merged_adapters.append(n)

    def unmerge(self) -> None:
        """Subtract every merged update again, restoring the base weight (up to rounding)."""
        if not self.merged_adapters:
            warnings.warn("not merged; nothing to unmerge.", stacklevel=2)
            return
        weight = self._base_weight()
        with torch.no_grad():
            while self.merged_adapters:
                weight.copy_(self._unmerged(self.merged_adapters.pop(), weight))

    def extra_repr(self) -> str:
        rs = ", ".join(f"{n}: r={self.r[n]} lora_alpha={self.lora_alpha[n]:g}" for n in self.adapters)
        return f"adapters=[{rs}], active={self.active_adapters}"


class LoRALinear(LoRALayer):
    """``base_layer(x) + scaling * lora_B(lora_A(lora_dropout(x)))`` around a frozen ``nn.Linear``,
    transformers' ``Conv1D`` (``fan_in_fan_out``) or an NF4 linear (QLoRA, chapter 08).

    Args:
        base_layer: the layer to adapt; kept as ``self.base_layer`` and frozen.
        r: rank of the update (LoRA paper, section 4.1).
        lora_alpha: numerator of the scaling ``lora_alpha / r`` (section 4.1: "we simply set
            alpha to the first r we try and do not tune it").
        lora_dropout: dropout probability on the LoRA path's input.
        use_rslora: scaling ``lora_alpha / sqrt(r)`` instead (rsLoRA, Kalajdzievski 2023).
        init_lora_weights: True (A kaiming-uniform, B = 0), "gaussian" (A ~ N(0, 1/r^2), B = 0),
            False (B random too: the layer does not start as the base layer), or "pissa" /
            "pissa_niter_K" (top-r SVD of the base weight, which becomes the residual: ``minilora.pissa``).
        adapter_name: name of this first adapter; add more with ``update_layer``.
        use_dora: DoRA, a trainable magnitude per output feature (``minilora.dora``).
    """

    adapter_layer_names = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Module, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
                 use_rslora: bool = False, init_lora_weights: bool | str = True, adapter_name: str = "default",
                 use_dora: bool = False):
        self.refuse_lora(base_layer)
        if isinstance(base_layer, nn.Linear) or getattr(base_layer, "is_quantized", False):
            fan_in_fan_out, dims = False, (base_layer.in_features, base_layer.out_features)  # weight (out, in)
        elif isinstance(base_layer, Conv1D):
            fan_in_fan_out, dims = True, tuple(base_layer.weight.shape)  # weight stored (in, out)
        else:
            raise ValueError(f"LoRALinear wraps nn.Linear or transformers' Conv1D, got {type(base_layer).__name__}. "
                             "For nn.Embedding use LoRAEmbedding.")
        super().__init__(base_layer)
        self.fan_in_fan_out = fan_in_fan_out
        self.in_features, self.out_features = dims
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()  # with DoRA also lora_magnitude_vector, made by the first DoRA adapter
        self.update_layer(adapter_name, r, lora_alpha, lora_dropout, init_lora_weights, use_rslora, use_dora)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                     init_lora_weights: bool | str = True, use_rslora: bool = False, use_dora: bool = False) -> None:
        """Add adapter ``adapter_name`` (PEFT's argument order). Only the first adapter of a layer
        starts active; choose others with ``set_adapter``, which also makes them trainable."""
        dims = (self.in_features, self.out_features)
        self._check_new(adapter_name, r, lora_alpha, lora_dropout, init_lora_weights, use_rslora, dims, use_dora)
        if use_dora:
            refuse_dora(self.base_layer)
        if is_pissa(init_lora_weights):
            check_pissa(self.base_layer, r, dims)
        kw = self._factory()
        self.lora_dropout[adapter_name] = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.lora_A[adapter_name] = nn.Linear(self.in_features, r, bias=False, **kw)  # weight (r, in)
        self.lora_B[adapter_name] = nn.Linear(r, self.out_features, bias=False, **kw)  # weight (out, r)
        scaling = lora_scaling(r, lora_alpha, use_rslora)
        if is_pissa(init_lora_weights):  # A, B from the SVD; the base keeps W - s B A
            pissa_init(self, adapter_name, init_lora_weights, scaling)
        elif init_lora_weights is not False:  # False keeps nn.Linear's random init of both
            A = self.lora_A[adapter_name].weight
            if init_lora_weights is True:
                nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            else:  # "gaussian"
                nn.init.normal_(A, std=1 / r)
            nn.init.zeros_(self.lora_B[adapter_name].weight)
        if use_dora:  # m = ||W_0 + s B A|| row-wise, after the initialisation (as PEFT)
            dora_init(self, adapter_name, scaling)
        self._register(adapter_name, r, lora_alpha, use_rslora)

    def _is_dora(self, name: str) -> bool:
        """Whether adapter ``name`` has a DoRA magnitude (``lora_magnitude_vector[name]``)."""
        return name in getattr(self, "lora_magnitude_vector", ())

    def _merged(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if not self._is_dora(name):
            return super()._merged(name, weight)
        base = weight.detach().clone()  # the norm is that of the weight without the merged adapters
        for n in reversed(self.merged_adapters):
            base = self._unmerged(n, base)
        return dora_merge(self.lora_magnitude_vector[name], weight, base, self.get_delta_weight(name).to(weight.dtype))

    def _unmerged(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if not self._is_dora(name):
            return super()._unmerged(name, weight)
        return dora_unmerge(self.lora_magnitude_vector[name], weight, self.get_delta_weight(name).to(weight.dtype))

    def get_delta_weight(self, adapter: str | None = None) -> torch.Tensor:
        adapter = self._resolve(adapter)
        delta = (self.lora_B[adapter].weight @ self.lora_A[adapter].weight) * self.scaling[adapter]  # (out, in)
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        for n in self._live_adapters():
            A, B = self.lora_A[n], self.lora_B[n]
            if self._is_dora(n):
                result = dora_forward(self, n, x.to(A.weight.dtype), result).to(result.dtype)
                continue
            h = self.lora_dropout[n](x.to(A.weight.dtype))  # (..., in)
            result = result + (B(A(h)) * self.scaling[n]).to(result.dtype)  # (..., r) -> (..., out)
        return result

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {super().extra_repr()}"
