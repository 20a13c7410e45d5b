r"""PiSSA: start LoRA from the principal singular directions of W.  (Chapter 09)

PiSSA (Meng et al. 2024, "PiSSA: Principal Singular Values and Singular Vectors Adaptation of Large
Language Models", section 3) takes the singular value decomposition :math:`W = U S V^\top` of a base
weight (out, in) and puts its top-r part into the adapter, as PEFT's ``pissa_init`` does:

.. math::   A = \sqrt{S_r / s}\; V_r^\top \;(r, in), \qquad B = U_r \sqrt{S_r / s} \;(out, r),
            \qquad W_{res} = W - s B A,

with :math:`s` the LoRA scaling, so :math:`s B A = U_r S_r V_r^\top` and the model computes exactly
what it did (:math:`W_{res} + sBA = W`) while the adapter starts on the directions that matter most.
``init_lora_weights="pissa"`` uses the full SVD (``torch.linalg.svd``); ``"pissa_niter_K"`` the
randomized ``torch.svd_lowrank`` with K subspace iterations (section 3.3: fast SVD), which draws from
torch's random generator. As in PEFT, the SVD runs in float32, the base weight keeps its dtype, and
A and B are float32.

Because the base weight changed, a trained PiSSA adapter only works on its residual base. To share it,
``minilora.io.save_adapter(..., path_initial_model_for_weight_conversion=folder)`` (PEFT's argument)
converts it into a plain LoRA relative to the *original* W, from a copy of the adapter saved at
initialisation (``folder``). With :math:`A_0, B_0` the initial and :math:`A, B` the trained factors,

.. math::   W_{res} + sBA = W + s(BA - B_0A_0) = W + s\,[B \mid -B_0] \begin{bmatrix} A \\ A_0 \end{bmatrix},

a rank-2r adapter with the same scaling: ``r`` and ``lora_alpha`` doubled (``lora_alpha`` times
sqrt 2 with rsLoRA) and ``init_lora_weights`` back to True. PEFT's conversion keeps only ``lora_A``
and ``lora_B``; minilora also keeps what is not relative to the base (DoRA magnitudes, saved modules,
trained biases), so that the file reproduces the trained model. ``unload`` of a PiSSA model gives
back :math:`W_{res}`, not W.

PiSSA reaches the layer only through its extension point (``minilora.layers``): ``PissaVariant`` (and
``PissaDoraVariant`` with ``use_dora=True``) is the variant of an adapter added with
``init_lora_weights="pissa"``; its ``init`` changes the base weight through ``layer.replace_base_weight``.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import PISSA_NITER
from .dora import DoraVariant
from .variants import LoraVariant

__all__ = ["PissaVariant", "PissaDoraVariant", "is_pissa", "check_pissa", "pissa_factors",
           "pissa_to_lora_state_dict", "pissa_to_lora_config"]


def is_pissa(init_lora_weights) -> bool:
    """Whether ``init_lora_weights`` asks for PiSSA ("pissa" or "pissa_niter_K")."""
    return isinstance(init_lora_weights, str) and init_lora_weights.startswith("pissa")


def check_pissa(base_layer: nn.Module, r: int, dims: tuple[int, int], name: str = "this layer") -> None:
    """Raise a clear error where PiSSA cannot start: a quantized or embedding base, a dtype the SVD
    does not take (PEFT's rule), or ``r`` above the number of singular values."""
    if getattr(base_layer, "is_quantized", False):
        raise ValueError(f"init_lora_weights='pissa' on {name}, a quantized (NF4) base: PiSSA needs the full-precision "
                         "weight. Initialise PiSSA on the full-precision model first, then quantize the residual "
                         "base (quantize_model_nf4), as the PiSSA paper does.")
    if isinstance(base_layer, nn.Embedding):
        raise ValueError(f"init_lora_weights='pissa' on {name}, an embedding: PiSSA starts from the SVD of a linear "
                         "weight. Leave embeddings out of target_modules, or use init_lora_weights=True.")
    dtype = base_layer.weight.dtype
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"PiSSA runs on float32, float16 or bfloat16 weights, as in PEFT; {name} is {dtype}. "
                        "Convert the model first (model.float()).")
    if r > min(dims):
        raise ValueError(f"init_lora_weights='pissa' takes the top r={r} singular directions of {name}, whose "
                         f"weight has only min{tuple(dims)} = {min(dims)}; choose r <= {min(dims)}.")


def pissa_factors(weight: torch.Tensor, r: int, scaling: float, init_lora_weights: str,
                  fan_in_fan_out: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A, B, W_res)`` from a base ``weight`` in its own layout ((in, out) when ``fan_in_fan_out``):
    A (r, in) and B (out, r) in float32, ``W_res = W - scaling B A`` in the weight's layout and dtype.
    The same operations, in the same order, as PEFT's ``pissa_init``."""
    dtype = weight.dtype
    w = weight.detach().to(torch.float32)
    w = w.T if fan_in_fan_out else w  # (out, in)
    if init_lora_weights == "pissa":
        V, S, Uh = torch.linalg.svd(w, full_matrices=False)  # w = V diag(S) Uh; PEFT's names
        Vr, Sr, Uhr = V[:, :r], S[:r], Uh[:r]  # (out, r), (r,), (r, in)
        Sr /= scaling
    else:
        match = PISSA_NITER.fullmatch(init_lora_weights) if isinstance(init_lora_weights, str) else None
        if match is None:
            raise ValueError(f"init_lora_weights should be 'pissa' or 'pissa_niter_K' (K an integer), "
                             f"got {init_lora_weights!r}.")
        Vr, Sr, Ur = torch.svd_lowrank(w, r, niter=int(match.group(1)))  # random: seeded by torch's generator
        Sr /= scaling
        Uhr = Ur.t()
    A = torch.diag(torch.sqrt(Sr)) @ Uhr  # (r, in)
    B = Vr @ torch.diag(torch.sqrt(Sr))  # (out, r)
    residual = (w - scaling * B @ A).to(dtype)  # (out, in)
    return A, B, residual.T if fan_in_fan_out else residual


class PissaVariant(LoraVariant):
    """PiSSA through the layer's extension point: an initialisation. ``check`` refuses what PiSSA cannot
    start from; ``init`` sets A, B from the SVD (instead of plain LoRA's draw) and replaces the base
    weight by the residual, through ``layer.replace_base_weight``. Forward and merging are plain LoRA's."""

    def check(self, layer, adapter_name: str, **kwargs) -> None:
        check_pissa(layer.base_layer, kwargs["r"], layer.dims)
        if layer.merged_adapters:
            raise ValueError(f"init_lora_weights={kwargs['init_lora_weights']!r} replaces the base weight, into which "
                             f"adapters {layer.merged_adapters} are merged; unmerge() first.")
        super().check(layer, adapter_name, **kwargs)

    def init(self, layer, adapter_name: str, **kwargs) -> None:
        """PEFT's ``pissa_init``; no ``super().init``: the SVD replaces plain LoRA's random draw."""
        A, B, residual = pissa_factors(layer.base_layer.weight, layer.r[adapter_name], layer.scaling[adapter_name],
                                       kwargs["init_lora_weights"], layer.fan_in_fan_out)
        with torch.no_grad():
            layer.lora_A[adapter_name].weight.copy_(A)  # float32, as PEFT
            layer.lora_B[adapter_name].weight.copy_(B)
        layer.replace_base_weight(residual)  # last: a failure before it leaves the base untouched


class PissaDoraVariant(DoraVariant, PissaVariant):
    """PiSSA's start, then DoRA: ``DoraVariant.init`` calls ``super().init`` (PiSSA's, by the method
    resolution order) before it takes the magnitude from the PiSSA factors and the residual base, as PEFT
    does; forward and merging are DoRA's."""


def pissa_to_lora_state_dict(trained: dict[str, torch.Tensor],
                             initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT's ``subtract_mutated_init``: ``lora_A`` becomes ``cat([A, A_0])`` (2r, in) and ``lora_B``
    ``cat([B, -B_0], dim=1)`` (out, 2r); every other tensor is kept as it is (see the module docstring).
    Both dicts are keyed as in an adapter file."""
    factors = [k for k in trained if k.endswith(("lora_A.weight", "lora_B.weight"))]
    missing = [k for k in factors if k not in initial]
    wrong = [k for k in factors if k in initial and initial[k].shape != trained[k].shape]
    if not factors or missing or wrong:
        raise ValueError("the initial adapter does not match the trained one: " + (
            "the trained adapter has no lora_A/lora_B (embeddings are not converted)" if not factors else
            f"missing {missing[:3]}" if missing else
            f"shapes differ for {[(k, tuple(initial[k].shape), tuple(trained[k].shape)) for k in wrong[:3]]}")
            + "; pass the folder saved from this adapter right after inject_lora, before training.")
    out = dict(trained)
    for k in factors:
        if k.endswith("lora_A.weight"):
            out[k] = torch.cat([trained[k], initial[k].to(trained[k].dtype)], dim=0)  # (2r, in)
        else:
            out[k] = torch.cat([trained[k], -initial[k].to(trained[k].dtype)], dim=1)  # (out, 2r)
    return out


def pissa_to_lora_config(config: dict) -> dict:
    """The ``adapter_config.json`` of the converted adapter: ``r`` doubled, ``lora_alpha`` doubled (times
    sqrt 2 with rsLoRA: the scaling stays), ``init_lora_weights`` True, as PEFT's ``save_pretrained``."""
    out = dict(config, init_lora_weights=True, r=2 * config["r"])
    out["lora_alpha"] = config["lora_alpha"] * (2 ** 0.5 if config.get("use_rslora") else 2)
    return out
