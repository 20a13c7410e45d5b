r"""LoRA layers: a frozen base layer plus a trainable low-rank update.  (Chapter 02; variants: chapter 09)

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

**The extension point: one variant per adapter** (PEFT's ``LoraVariant``). All that differs between
LoRA and its variants goes through ``layer.lora_variant[name]``, a ``minilora.variants.LoraVariant`` whose
defaults are plain LoRA: ``update_layer`` asks ``resolve_lora_variant`` for the new adapter's variant,
calls its ``check`` before changing anything and its ``init`` once A and B exist; the layer's ``forward``,
``merge``, ``unmerge`` and ``get_delta_weight`` call the variant's method of the same name. DoRA
(``use_dora=True``, ``minilora.dora.DoraVariant``) overrides forward and merging, PiSSA
(``init_lora_weights="pissa"``, ``minilora.pissa.PissaVariant``) init. A new feature (chapter 14's
intruder dimensions) is a variant that a subclass's ``resolve_lora_variant`` returns. A mixed-adapter
batch (chapter 13, ``minilora.serving``) belongs to one forward pass, not to one adapter: while it lasts,
``_mixed_batch`` holds its plan and ``forward`` hands the input to it. The layer guarantees to a variant:

* the containers ``adapter_layer_names`` (``lora_A``, ``lora_B``, ``lora_magnitude_vector``) exist from
  ``__init__`` and never change; an empty one adds no ``state_dict`` key. What a variant trains lives in
  one of them, so that saving, ``set_adapter`` (the active adapters train) and deleting see it;
* ``check`` runs after the generic checks, before any change: a refused ``update_layer`` leaves the layer
  as it was, and so does an ``init`` that raises (the adapter is removed; replace the base weight last);
* when ``init`` runs, ``r``, ``lora_alpha``, ``scaling``, ``use_rslora`` and ``lora_dropout`` hold the
  adapter's values and A, B are allocated in PEFT's order; ``super().init`` draws them as plain LoRA;
* ``forward`` runs for the active, unmerged adapters of an enabled layer, in order; its result is cast
  to the base output's dtype. ``merge``/``unmerge`` get the full-precision base weight and return a new
  tensor, which the layer writes (after ``safe_merge``'s NaN check); unmerging goes newest first;
* the plain-LoRA primitives: ``reset_lora_parameters(name, init)``, ``plain_output(name, x)``
  (:math:`sBA\,\text{dropout}(x)`), ``plain_delta_weight(name)`` (:math:`sBA`, base layout),
  ``unmerged_weight(w)``, ``dims`` (in, out), and ``replace_base_weight(w)``, the one way to change the base.
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
from .dora import DoraVariant
from .errors import UnknownAdapterError
from .pissa import PissaDoraVariant, PissaVariant, is_pissa
from .utils import check_bool
from .variants import LoraVariant

__all__ = ["LoRALayer", "LoRALinear", "LoraVariant"]


class LoRALayer(nn.Module):
    """What every LoRA layer shares (PEFT's ``LoraLayer``): the frozen ``base_layer``, the
    hyper-parameters per adapter (``r``, ``lora_alpha``, ``scaling``, ``use_rslora``: dicts keyed by
    adapter name), each adapter's variant (``lora_variant``), which adapters are active or merged,
    merging, and switching adapters off. Subclasses supply the plain-LoRA maths of their layer type.

    ``adapter_layer_names`` names the per-adapter containers that hold trainable weights."""

    adapter_layer_names: tuple[str, ...] = ()
    other_param_names: tuple[str, ...] = ("r", "lora_alpha", "scaling", "lora_dropout", "use_rslora")
    _container: type = nn.ModuleDict  # the type of each container in adapter_layer_names

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.refuse_lora(base_layer)
        self.base_layer = base_layer.requires_grad_(False)
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.use_rslora: dict[str, bool] = {}
        self.lora_dropout = nn.ModuleDict()
        for container in self.adapter_layer_names:
            setattr(self, container, self._container())
        self.lora_variant: dict[str, LoraVariant] = {}
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self._disable_adapters = False
        self._mixed_batch = None  # chapter 13: the rows' adapters while `with minilora.mixed_batch(...)` is open

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
            raise UnknownAdapterError(name, self.adapters, "this layer")

    def _resolve(self, name: str | None) -> str:
        name = name if name is not None else (self.active_adapters or self.adapters)[0]
        self._check_has(name)
        return name

    def _known(self, names: str | Sequence[str], what: str) -> list[str]:
        """``names`` (one name or a list of them) as a list, each checked to be an adapter of this layer."""
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"{what} must be an adapter name or a list of names, got {names!r}; e.g. ['default'].")
        for n in names:
            self._check_has(n)
        return list(names)

    def set_adapter(self, adapter_names: str | Sequence[str]) -> None:
        """Make ``adapter_names`` the active adapters (several are summed: stacked). As in PEFT the
        active adapters are trainable and the others frozen."""
        names = self._known(adapter_names, "adapter_names")
        if self.merged_adapters:
            raise ValueError(f"adapters {self.merged_adapters} are merged into the weight; unmerge() before "
                               "switching.")
        self.active_adapters = names
        self._set_trainable()

    def _set_trainable(self) -> None:
        for n in self.adapters:
            for container in self.adapter_layer_names:
                if n in getattr(self, container):  # a DoRA magnitude exists for DoRA adapters only
                    getattr(self, container)[n].requires_grad_(n in self.active_adapters)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove adapter ``adapter_name`` from this layer (unmerge it first if it is merged)."""
        adapter_name, = self._known(adapter_name, "adapter_name")
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged into the weight; unmerge() before deleting it.")
        self._forget(adapter_name)

    def _forget(self, name: str) -> None:
        for container in self.adapter_layer_names + ("lora_dropout",):
            if name in getattr(self, container):
                del getattr(self, container)[name]
        for values in (self.r, self.lora_alpha, self.scaling, self.use_rslora, self.lora_variant):
            values.pop(name, None)
        if name in self.active_adapters:
            self.active_adapters.remove(name)

    @property
    def disable_adapters(self) -> bool:
        """True while the layer computes its base layer alone (``enable_adapters(False)``)."""
        return self._disable_adapters

    def enable_adapters(self, enabled: bool) -> None:
        """Switch the LoRA path on (True) or off (False, the base layer alone). Merged updates are in
        the weight itself: ``minilora.disable_adapter(model)`` unmerges them for the duration."""
        self._disable_adapters = not check_bool(enabled, "enabled")

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
    def resolve_lora_variant(self, *, use_dora: bool = False, init_lora_weights: bool | str = True,
                             **kwargs) -> LoraVariant:
        """The variant a new adapter gets (PEFT's method of the same name). Override it in a subclass to
        plug in a variant of your own; ``kwargs`` holds the other arguments of ``update_layer``."""
        if is_pissa(init_lora_weights):
            return PissaDoraVariant() if use_dora else PissaVariant()
        return DoraVariant() if use_dora else LoraVariant()

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                     init_lora_weights: bool | str = True, use_rslora: bool = False, use_dora: bool = False) -> None:
        """Add adapter ``adapter_name`` (PEFT's argument order), after checking every argument. Only the
        first adapter of a layer starts active; choose others with ``set_adapter``, which also makes
        them trainable."""
        args = dict(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, init_lora_weights=init_lora_weights,
                    use_rslora=use_rslora, use_dora=use_dora)
        variant = self._check_new(adapter_name, **args)
        self.r[adapter_name], self.lora_alpha[adapter_name], self.use_rslora[adapter_name] = r, lora_alpha, use_rslora
        self.scaling[adapter_name] = lora_scaling(r, lora_alpha, use_rslora)
        self.lora_variant[adapter_name] = variant
        try:
            self._create_adapter(adapter_name, r, lora_dropout)
            variant.init(self, adapter_name, **args)
        except BaseException:
            self._forget(adapter_name)
            raise
        self.active_adapters = self.active_adapters or [adapter_name]  # the first adapter becomes active
        self._set_trainable()

    def _check_new(self, name: str, **args) -> LoraVariant:
        """Every check of ``update_layer``; returns the new adapter's variant."""
        check_lora_args(**args)
        if not isinstance(name, str):
            raise TypeError(f"an adapter name must be a string, got {name!r} ({type(name).__name__}).")
        if not name or "." in name:
            raise ValueError(f"an adapter name must be a non-empty string without dots, got {name!r}.")
        if hasattr(nn.ModuleDict(), name):  # adapters are keys of ModuleDicts, whose methods they would shadow
            raise ValueError(f"{name!r} is the name of an nn.Module attribute; choose another adapter name.")
        if name in self.r:
            raise ValueError(f"adapter {name!r} already exists in this layer; pick another name, or "
                             f"delete_adapter({name!r}) first.")
        if args["r"] >= min(self.dims):
            warnings.warn(f"r={args['r']} >= min{self.dims}: the update is no longer low rank, and LoRA trains more "
                          "parameters than a full fine-tune of this layer would.", stacklevel=3)
        variant = self.resolve_lora_variant(**args)
        variant.check(self, name, **args)
        return variant

    def _factory(self) -> dict:
        """Device and dtype for new adapter weights: the base layer's device; fp32 (or fp64 for an
        fp64 base), also on a 16-bit or 4-bit base, as PEFT's default ``autocast_adapter_dtype``."""
        ref = next(itertools.chain(self.base_layer.parameters(), self.base_layer.buffers()), None)
        weight = getattr(self.base_layer, "weight", None)
        dtype = weight.dtype if isinstance(weight, torch.Tensor) and weight.dtype == torch.float64 else torch.float32
        return {"device": ref.device if ref is not None else None, "dtype": dtype}

    # ----- the plain-LoRA maths of the layer type, which LoraVariant's defaults use ------------
    dims: tuple[int, int]  # (in, out) of the adapted map; _create_adapter(name, r, lora_dropout) allocates

    def reset_lora_parameters(self, adapter_name: str, init_lora_weights: bool | str) -> None:
        """Plain LoRA's initialisation of A and B (PEFT's method of the same name)."""
        raise NotImplementedError

    def plain_output(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """What plain LoRA adds to the base output for input ``x``, in the adapter's dtype."""
        raise NotImplementedError

    def plain_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """Plain LoRA's ``scaling * B @ A``, in the base layer's own weight layout."""
        raise NotImplementedError

    # ----- merging ---------------------------------------------------------------------------
    @property
    def merged(self) -> bool:
        """True when some adapter's update has been folded into the base weight."""
        return bool(self.merged_adapters)

    def _base_weight(self) -> torch.Tensor:
        if getattr(self.base_layer, "is_quantized", False):
            raise ValueError("cannot merge a LoRA update into a quantized (NF4) base weight: the sum would have to "
                               "be re-quantized and the adapter's precision lost. Dequantize the base first, "
                               "merge_and_unload(minilora.qlora.dequantize_model_nf4(model)) (chapter 08), or keep the "
                               "adapter unmerged.")
        return self.base_layer.weight

    def replace_base_weight(self, weight: torch.Tensor) -> None:
        """Write ``weight`` (the base's shape and layout) into the frozen base weight, in place (the same
        Parameter object): how a variant's ``init`` changes the base (PiSSA's residual)."""
        current = self.base_layer.weight
        if getattr(self.base_layer, "is_quantized", False) or self.merged_adapters or weight.shape != current.shape:
            raise ValueError(f"cannot replace the base weight {tuple(current.shape)} by {tuple(weight.shape)}: it "
                             "takes the same shape, a full-precision base and no merged adapter (unmerge() first).")
        with torch.no_grad():
            current.copy_(weight)

    def unmerged_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` with every merged adapter taken out, newest first (a new tensor)."""
        base = weight.detach().clone()
        for n in reversed(self.merged_adapters):
            base = self.lora_variant[n].unmerge(self, n, base)
        return base

    def get_delta_weight(self, adapter: str | None = None) -> torch.Tensor:
        """The update of ``adapter`` (default: the first active one) in the base layer's own weight layout,
        as its variant defines it: ``scaling * B @ A`` for LoRA (and for DoRA, whose merge rescales it)."""
        adapter = self._resolve(adapter)
        return self.lora_variant[adapter].get_delta_weight(self, adapter)

    def merge(self, safe_merge: bool = False, adapter_names: Sequence[str] | None = None) -> None:
        """Fold the update of each adapter (default: the active ones) into the base weight. Every name
        is checked first. ``safe_merge`` checks each result for NaN and inf before writing it, as in
        PEFT; a refused merge leaves the weight as it was."""
        check_bool(safe_merge, "safe_merge")
        names = list(self.active_adapters) if adapter_names is None else self._known(adapter_names, "adapter_names")
        todo = [n for n in dict.fromkeys(names) if n not in self.merged_adapters]
        if not todo:
            warnings.warn(f"already merged: {names or 'no active adapter'}; nothing to do.", stacklevel=2)
            return
        weight = self._base_weight()
        before, merged_before = weight.detach().clone() if safe_merge else None, list(self.merged_adapters)
        with torch.no_grad():
            for n in todo:
                new = self.lora_variant[n].merge(self, n, weight)
                if safe_merge and not torch.isfinite(new).all():
                    weight.copy_(before)
                    self.merged_adapters[:] = merged_before
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
                n = self.merged_adapters.pop()
                weight.copy_(self.lora_variant[n].unmerge(self, n, weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._mixed_batch is not None:  # row i uses its own adapter (minilora.serving, chapter 13)
            return self._mixed_batch.forward(self, x)
        result = self.base_layer(x)
        for n in self._live_adapters():
            result = self.lora_variant[n].forward(self, n, x, result).to(result.dtype)
        return result

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
        use_dora: DoRA, a trainable magnitude per output feature (``lora_magnitude_vector``, ``minilora.dora``).
    """

    adapter_layer_names = ("lora_A", "lora_B", "lora_magnitude_vector")

    def __init__(self, base_layer: nn.Module, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
                 use_rslora: bool = False, init_lora_weights: bool | str = True, adapter_name: str = "default",
                 use_dora: bool = False):
        self.refuse_lora(base_layer)
        if getattr(base_layer, "is_quantized", False) or isinstance(base_layer, nn.Linear):
            fan_in_fan_out, dims = False, (base_layer.in_features, base_layer.out_features)  # weight (out, in)
        elif isinstance(base_layer, Conv1D):
            fan_in_fan_out, dims = True, tuple(base_layer.weight.shape)  # weight stored (in, out)
        else:
            raise TypeError(f"LoRALinear wraps nn.Linear or transformers' Conv1D, got {type(base_layer).__name__}. "
                             "For nn.Embedding use LoRAEmbedding.")
        super().__init__(base_layer)
        self.fan_in_fan_out = fan_in_fan_out
        self.in_features, self.out_features = dims
        self.update_layer(adapter_name, r, lora_alpha, lora_dropout, init_lora_weights, use_rslora, use_dora)

    @property
    def dims(self) -> tuple[int, int]:
        return self.in_features, self.out_features

    def _create_adapter(self, name: str, r: int, lora_dropout: float) -> None:
        kw = self._factory()
        self.lora_dropout[name] = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, **kw)  # weight (r, in)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, **kw)  # weight (out, r)

    def reset_lora_parameters(self, adapter_name: str, init_lora_weights: bool | str) -> None:
        """True: A kaiming-uniform (a = sqrt 5), B = 0; "gaussian": A ~ N(0, 1/r^2), B = 0; False: both
        keep ``nn.Linear``'s random draw."""
        if init_lora_weights is False:
            return
        if init_lora_weights is not True and init_lora_weights != "gaussian":
            raise ValueError(f"plain LoRA starts from True, 'gaussian' or False, not {init_lora_weights!r}; "
                             "PiSSA is minilora.pissa.PissaVariant's init.")
        A = self.lora_A[adapter_name].weight
        if init_lora_weights is True:
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        else:
            nn.init.normal_(A, std=1 / self.r[adapter_name])
        nn.init.zeros_(self.lora_B[adapter_name].weight)

    def plain_output(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        A, B = self.lora_A[adapter_name], self.lora_B[adapter_name]
        h = self.lora_dropout[adapter_name](x.to(A.weight.dtype))  # (..., in)
        return B(A(h)) * self.scaling[adapter_name]  # (..., r) -> (..., out)

    def plain_delta_weight(self, adapter_name: str) -> torch.Tensor:
        delta = (self.lora_B[adapter_name].weight @ self.lora_A[adapter_name].weight) * self.scaling[adapter_name]
        return delta.T if self.fan_in_fan_out else delta  # (out, in), or (in, out) for Conv1D

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {super().extra_repr()}"
