r"""LoRA+: a larger learning rate for B than for A (Hayou, Ghosh and Yu, 2024).  (Chapter 09)

In :math:`\Delta W = \frac{\alpha}{r} BA`, A (r, in) reads the input and B (out, r) writes the
output. With one learning rate for both, the paper shows (section 3, in the limit of large width)
that the update cannot be efficient for both factors at once: B, which starts at 0, learns too
slowly. LoRA+ sets :math:`\eta_B = \lambda \eta_A` with :math:`\lambda > 1`; the paper suggests
:math:`\lambda = 2^4`.

``create_loraplus_optimizer`` builds any ``torch.optim`` optimizer with PEFT's parameter groups,
in PEFT's order, by PEFT's rule (``peft.optimizers.create_loraplus_optimizer``):

1. the adapters of embedding layers (``LoRAEmbedding``): learning rate ``loraplus_lr_embedding``;
2. every ``lora_B`` and every other 1-D trainable parameter (biases, norm weights, a trained
   head's bias): ``lr * loraplus_lr_ratio``, with weight decay ``loraplus_weight_decay`` except for
   biases and parameters inside a ``LayerNorm``, which get none;
3. everything else that trains (``lora_A``, a trained head's weight): ``lr``.

Only trainable parameters are given to the optimizer. Where PEFT would silently drop a
``weight_decay`` argument (each group sets its own), minilora refuses it and names
``loraplus_weight_decay`` instead.
"""
from __future__ import annotations

from torch import nn
from torch.optim import Optimizer
from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
from transformers.trainer_pt_utils import get_parameter_names

from .embedding import LoRAEmbedding
from .utils import check_number

__all__ = ["create_loraplus_optimizer", "loraplus_groups"]


def loraplus_groups(model: nn.Module) -> dict[str, dict[str, nn.Parameter]]:
    """The trainable parameters by name, in LoRA+'s groups: "groupA", "embedding", "groupB" (weight
    decay) and "groupB_no_decay" (biases and LayerNorm parameters), as PEFT forms them."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module with LoRA adapters (minilora.inject_lora), got "
                        f"{type(model).__name__}.")
    decay = {n for n in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in n}
    groups: dict[str, dict[str, nn.Parameter]] = {"groupA": {}, "embedding": {}, "groupB": {}, "groupB_no_decay": {}}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # an adapter's tensor lives in a dict below its layer: <layer>.lora_embedding_A.<adapter>
        owner = ".".join(name.split(".")[:-2])
        if owner and isinstance(model.get_submodule(owner), LoRAEmbedding):
            groups["embedding"][name] = param
        elif "lora_B" in name or param.ndim == 1:
            groups["groupB" if name in decay else "groupB_no_decay"][name] = param
        else:
            groups["groupA"][name] = param
    return groups


def create_loraplus_optimizer(model: nn.Module, optimizer_cls: type[Optimizer], *, lr: float,
                              loraplus_lr_ratio: float, **kwargs) -> Optimizer:
    """An ``optimizer_cls`` over ``model``'s trainable parameters with LoRA+'s learning rates, with
    PEFT's signature.

    Args:
        model: a model with LoRA adapters (``inject_lora``); only its trainable parameters are used.
        optimizer_cls: e.g. ``torch.optim.AdamW``.
        lr: :math:`\\eta_A`, the learning rate of the A matrices (and of other trained matrices).
        loraplus_lr_ratio: :math:`\\lambda = \\eta_B / \\eta_A` (paper, section 4: :math:`2^4` works well;
            lower ``lr`` a little, e.g. halve it, when raising the ratio).
        loraplus_lr_embedding: learning rate of embedding adapters (default ``1e-6``, as PEFT).
        loraplus_weight_decay: weight decay of every group but ``groupB_no_decay`` (default 0.0).
        kwargs: the rest goes to ``optimizer_cls`` (e.g. ``betas``, ``eps``).
    """
    if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, Optimizer)):
        raise TypeError(f"optimizer_cls must be a torch.optim.Optimizer class, got {optimizer_cls!r}; "
                        "e.g. create_loraplus_optimizer(model, torch.optim.AdamW, lr=2e-4, loraplus_lr_ratio=16).")
    lr = check_number(lr, "lr", low=0, low_open=True, hint="It is the learning rate of A, e.g. 2e-4.")
    ratio = check_number(loraplus_lr_ratio, "loraplus_lr_ratio", low=0, low_open=True,
                         hint="It is lr_B / lr_A; the LoRA+ paper suggests 16.")
    if "weight_decay" in kwargs:
        raise ValueError("LoRA+ sets the weight decay of each parameter group itself: pass "
                         "loraplus_weight_decay=... instead of weight_decay=... (biases and LayerNorm parameters "
                         "get none).")
    weight_decay = check_number(kwargs.pop("loraplus_weight_decay", 0.0), "loraplus_weight_decay", low=0)
    lr_embedding = check_number(kwargs.pop("loraplus_lr_embedding", 1e-6), "loraplus_lr_embedding", low=0,
                                low_open=True, hint="PEFT's default is 1e-6.")
    groups = loraplus_groups(model)
    if not any(groups.values()):
        raise ValueError("the model has no trainable parameters: inject LoRA first (minilora.inject_lora).")
    param_groups = [
        {"params": list(groups["groupA"].values()), "weight_decay": weight_decay, "lr": lr},
        {"params": list(groups["embedding"].values()), "weight_decay": weight_decay, "lr": lr_embedding},
        {"params": list(groups["groupB"].values()), "weight_decay": weight_decay, "lr": lr * ratio},
        {"params": list(groups["groupB_no_decay"].values()), "weight_decay": 0.0, "lr": lr * ratio},
    ]
    return optimizer_cls(param_groups, lr=lr, **kwargs)
