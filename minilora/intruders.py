r"""Intruder dimensions: what a LoRA update adds that the pre-trained weight never had.  (Chapter 14)

Shuttleworth et al. ("LoRA vs Full Fine-tuning: An Illusion of Equivalence", NeurIPS 2025) compare the
singular vectors of a fine-tuned weight :math:`W' = W + \Delta W` with those of the pre-trained :math:`W`.
Write :math:`W = U \Sigma V^\top` and :math:`W' = U' \Sigma' V'^\top`. The :math:`j`-th left singular vector
of :math:`W'` is an **intruder** when it resembles none of :math:`W`'s:

.. math::  \max_i \, |u'_j \cdot u_i| < \varepsilon, \qquad j \le k,

among the top :math:`k` (the largest singular values, those that matter most). Full fine-tuning mostly
rotates existing directions slightly; LoRA tends to add a few new, strong ones, and they go with forgetting.

**Mitigation** (``reduce_intruder_dimension``, PEFT's function of the same name and signature): shrink each
intruder component of :math:`W'` to a fraction :math:`\lambda` of itself,

.. math::  W'_\lambda = W' + (\lambda - 1) \sum_{j \in I} \sigma'_j u'_j v'^\top_j ,

then write :math:`(W'_\lambda - W) / s` back as a rank-:math:`r` adapter by its top-:math:`r` SVD
(:math:`B = U_r \Sigma_r^{1/2}`, :math:`A = \Sigma_r^{1/2} V_r^\top`), as a **new** adapter that becomes
active; the old one is kept. :math:`\lambda = 1` changes nothing and :math:`\lambda = 0` removes the
intruders: the higher :math:`\lambda`, the more of the intruder is *kept*. (PEFT's docstring says the
opposite, "the higher the value the more of the intruder dimension is subtracted"; its code, and this one,
keep :math:`\lambda` of it.) A layer without intruders gets an exact copy of the old factors.

One difference from PEFT, on purpose: the new adapter also gets the old one's trained ``modules_to_save``
copies (a classifier head), where PEFT's starts from untrained copies of the original modules.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .adapters import add_adapter, set_adapter
from .dora import DoraVariant
from .embedding import LoRAEmbedding
from .inject import _check_new_name
from .merge import _one_name, _require_lora, check_not_merged, lora_layers
from .modules_to_save import ModulesToSaveWrapper
from .utils import check_int, check_number

__all__ = ["intruder_dimensions", "reduce_intruder_dimension"]


def _intruders(W: torch.Tensor, W_merged: torch.Tensor, top_k: int, threshold_epsilon: float):
    """(intruder indices, every new direction's largest |cos| with W's, and W_merged's SVD U, S, V^T), in fp32."""
    U_base = torch.linalg.svd(W.float(), full_matrices=False)[0]
    U_merged, S_merged, Vh_merged = torch.linalg.svd(W_merged.float(), full_matrices=False)
    cos_sim = (U_merged.T @ U_base).abs().max(dim=1).values  # (min(out, in),) best match of each new direction
    return torch.where(cos_sim[:top_k] < threshold_epsilon)[0].tolist(), cos_sim, U_merged, S_merged, Vh_merged


def intruder_dimensions(W: torch.Tensor, W_merged: torch.Tensor, top_k: int = 10,
                        threshold_epsilon: float = 0.5) -> tuple[list[int], torch.Tensor]:
    """The indices ``j < top_k`` of ``W_merged``'s left singular vectors whose largest |cosine| with any of
    ``W``'s is below ``threshold_epsilon``, and those largest |cosines| for every singular vector."""
    return _intruders(W, W_merged, top_k, threshold_epsilon)[:2]


def _out_in(layer, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as (out, in), the orientation of ``B @ A``: transposed for GPT-2's Conv1D and embeddings."""
    return weight.T if getattr(layer, "fan_in_fan_out", False) or isinstance(layer, LoRAEmbedding) else weight


def _mitigated_factors(layer, name: str, top_k: int, eps: float, lam: float) -> tuple[int, tuple | None]:
    """(the number of intruders, the new (A, B), or None to copy the old ones) for one layer."""
    W = _out_in(layer, layer.get_base_layer().weight.detach())  # (out, in)
    dtype = W.dtype
    W_merged = (W + _out_in(layer, layer.get_delta_weight(name))).float()
    W = W.float()
    idx, _, U_merged, S_merged, V_merged = _intruders(W, W_merged, top_k, eps)  # V_merged is V^T
    if not idx:
        return 0, None
    B_intruder = U_merged[:, idx] @ torch.diag(S_merged)[idx, :].sqrt()  # (out, k') @ (k', k): as PEFT writes it
    A_intruder = torch.diag(S_merged)[:, idx].sqrt() @ V_merged[idx, :]
    dW = (W_merged + (lam - 1) * (B_intruder @ A_intruder) - W) / layer.scaling[name]  # (out, in), unscaled
    U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
    r = layer.r[name]
    B_new = U[:, :r] @ torch.diag(S[:r]).sqrt()  # (out, r)
    A_new = torch.diag(S[:r]).sqrt() @ Vh[:r]  # (r, in)
    return len(idx), (A_new.to(dtype), B_new.to(dtype))


def reduce_intruder_dimension(model: nn.Module, old_adapter_name: str = "default",
                              new_adapter_name: str = "intruder_reduced", top_k: int = 10,
                              threshold_epsilon: float = 0.5, mitigation_lambda: float = 0.75,
                              logging_sink: Callable[[str], object] | None = print) -> nn.Module:
    """Add adapter ``new_adapter_name``: adapter ``old_adapter_name`` with each of its layers' intruder
    dimensions (among the top ``top_k``, |cos| < ``threshold_epsilon``) scaled by ``mitigation_lambda``, and
    make it the active adapter (PEFT's ``peft.tuners.lora.intruders.reduce_intruder_dimension``). Every SVD
    is computed before the model changes. ``logging_sink`` gets one line per layer (None: silent).
    Returns the model."""
    _require_lora(model)
    layers = dict(lora_layers(model))
    _one_name(model, old_adapter_name, "old_adapter_name")
    _check_new_name(model, new_adapter_name)
    check_int(top_k, "top_k")
    check_number(threshold_epsilon, "threshold_epsilon", low=0)
    check_number(mitigation_lambda, "mitigation_lambda")
    check_not_merged(model, "reduce_intruder_dimension")
    if logging_sink is not None and not callable(logging_sink):
        raise TypeError(f"logging_sink must be a function such as print, or None; got {logging_sink!r}.")
    plans = {}
    for path, layer in layers.items():
        if old_adapter_name not in layer.r:
            continue
        if isinstance(layer.lora_variant[old_adapter_name], DoraVariant):
            raise ValueError(f"adapter {old_adapter_name!r} is not plain LoRA in {path} (DoRA); intruder reduction "
                             "rewrites A and B only.")
        if not hasattr(layer.get_base_layer(), "weight") or getattr(layer.get_base_layer(), "is_quantized", False):
            raise ValueError(f"{path} has a quantized base; dequantize it first (minilora.qlora.dequantize_model_nf4).")
        plans[path] = _mitigated_factors(layer, old_adapter_name, top_k, threshold_epsilon, mitigation_lambda)
    add_adapter(model, new_adapter_name, model.peft_config[old_adapter_name])
    with torch.no_grad():
        for m in model.modules():  # the trained heads too (PEFT's new adapter gets untrained copies of them)
            if isinstance(m, ModulesToSaveWrapper) and old_adapter_name in m.modules_to_save:
                m.modules_to_save[new_adapter_name].load_state_dict(m.modules_to_save[old_adapter_name].state_dict())
        for path, (count, factors) in plans.items():
            layer = layers[path]
            old, new = layer.factors(old_adapter_name), layer.factors(new_adapter_name)
            for target, source in zip(new, factors if factors is not None else old):
                target.copy_(source)
            if logging_sink is not None:
                logging_sink(f"{path}: Intruders: {count}" if count else f"{path}: No intruders")
    if logging_sink is not None:
        logging_sink(f"Enabling new adapter {new_adapter_name}")
    return set_adapter(model, new_adapter_name)

