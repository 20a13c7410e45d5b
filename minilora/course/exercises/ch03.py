r"""Exercises of chapter 03 (Your first LoRA fine-tune).

* 3.1 ``count_trainable(model) -> int``: the number of numbers the optimiser will change, i.e. the
  total ``numel`` of the parameters with ``requires_grad``.
* 3.2 ``add_lora_to_mlp(model, r, lora_alpha) -> model``: in an ``nn.Sequential`` MLP, wrap every
  ``nn.Linear`` except the last one in ``LoRALinear(layer, r, lora_alpha)``; the last layer (the head)
  stays a plain, fully trainable ``nn.Linear``. Trainable count: :math:`\sum_\ell r(d_\ell + k_\ell)`
  plus the head.
* 3.3 ``accuracy(model, X, y) -> float``: the fraction of ``argmax(model(X)) == y``, computed in
  eval mode (dropout off) and without building a graph.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ...layers import LoRALinear
from ._core import Hint, checker

__all__ = ["check_count_trainable", "check_add_lora_to_mlp", "check_accuracy"]


def _mlp(sizes: list[int], seed: int = 0, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(*layers)


def _models() -> list[tuple[nn.Module, int]]:
    """(model, its number of trainable numbers) for a few freezing patterns."""
    full = _mlp([8, 6, 3])
    head = _mlp([8, 6, 3]).requires_grad_(False)
    head[2].requires_grad_(True)
    lora = _mlp([8, 6, 3])
    lora[0] = LoRALinear(lora[0], r=2, lora_alpha=2)
    nobias = nn.Sequential(nn.Linear(5, 4, bias=False), nn.Linear(4, 2))
    nobias[1].bias.requires_grad_(False)
    return [(full, 8 * 6 + 6 + 6 * 3 + 3), (head, 6 * 3 + 3), (lora, 2 * (8 + 6) + 6 * 3 + 3), (nobias, 5 * 4 + 4 * 2)]


@checker("Exercise 3.1: count the trainable parameters")
def check_count_trainable(count_trainable: Callable[[nn.Module], int]) -> None:
    """``count_trainable(model)`` must return the total ``numel`` of parameters with ``requires_grad``."""
    for model, want in _models():
        got = count_trainable(model)
        if isinstance(got, torch.Tensor):
            got = got.item()
        if not isinstance(got, int) or isinstance(got, bool):
            raise Hint(f"return an int (a count of numbers), got {type(got).__name__}.")
        if got == want:
            continue
        params = list(model.parameters())
        if got == sum(p.numel() for p in params):
            raise Hint("you counted the frozen parameters too. Keep only those with p.requires_grad.")
        if got == sum(1 for p in params if p.requires_grad):
            raise Hint("you counted parameter *tensors*; count the numbers in them: p.numel().")
        if got == sum(p.numel() for p in params if not p.requires_grad):
            raise Hint("you counted the frozen parameters; the trainable ones have requires_grad == True.")
        raise Hint(f"for a model with {want} trainable numbers you returned {got}. "
                   "sum(p.numel() for p in model.parameters() if p.requires_grad)")


@checker("Exercise 3.2: add LoRA to an MLP")
def check_add_lora_to_mlp(add_lora_to_mlp: Callable[[nn.Sequential, int, float], nn.Module]) -> None:
    """``add_lora_to_mlp(model, r, lora_alpha)``: LoRA on every Linear but the last, the head fully trainable."""
    for sizes, r, lora_alpha in [([64, 32, 32, 10], 4, 8), ([10, 7, 3], 2, 2), ([12, 9, 8, 7, 5], 3, 6)]:
        model = _mlp(sizes)
        x = torch.randn(4, sizes[0], generator=torch.Generator().manual_seed(1))
        ref = model(x).detach()
        out = add_lora_to_mlp(model, r, lora_alpha)
        if out is None:
            raise Hint("return the model (the one you changed) at the end of the function.")
        linears = [m for m in out if isinstance(m, (nn.Linear, LoRALinear))]
        if len(linears) != len(sizes) - 1:
            raise Hint(f"the model must keep its {len(sizes) - 1} linear layers (wrapped or not), found "
                       f"{len(linears)}. Replace model[i] in place: model[i] = LoRALinear(model[i], ...).")
        hidden, head = linears[:-1], linears[-1]
        if isinstance(head, LoRALinear):
            raise Hint("leave the last layer (the head) a plain nn.Linear: it is small and task-specific, "
                       "so it is trained fully (PEFT calls it a module to save).")
        if not all(isinstance(m, LoRALinear) for m in hidden):
            raise Hint("wrap every nn.Linear except the last one in LoRALinear; some hidden layer is not wrapped.")
        if any(m.r["default"] != r or m.lora_alpha["default"] != lora_alpha for m in hidden):
            raise Hint(f"use the given rank and alpha: LoRALinear(layer, r={r}, lora_alpha={lora_alpha}).")
        if not all(p.requires_grad for p in head.parameters()):
            raise Hint("the head must stay trainable: do not freeze the last layer.")
        want = sum(r * (m.in_features + m.out_features) for m in hidden) + sum(p.numel() for p in head.parameters())
        got = sum(p.numel() for p in out.parameters() if p.requires_grad)
        if got != want:
            raise Hint(f"expected {want} trainable numbers (r * (in + out) per wrapped layer, plus the head), "
                       f"found {got}: are the base weights frozen, and are the A and B matrices trainable?")
        if not torch.equal(out(x), ref):
            raise Hint("at initialisation the model must compute exactly what it did before (B = 0). "
                       "Did you change the layers' weights or the order of the layers?")


@checker("Exercise 3.3: accuracy")
def check_accuracy(accuracy: Callable[[nn.Module, torch.Tensor, torch.Tensor], float]) -> None:
    """``accuracy(model, X, y)`` must be the fraction of correct argmax predictions, in eval mode."""
    model = _mlp([6, 32, 4], seed=3, dropout=0.5)
    g = torch.Generator().manual_seed(4)
    X = torch.randn(200, 6, generator=g)
    with torch.no_grad():
        model.eval()
        pred = model(X).argmax(-1)
        y = torch.where(torch.rand(200, generator=g) < 0.7, pred, torch.randint(0, 4, (200,), generator=g))
        want = (pred == y).float().mean().item()
    model.train()  # as after training: the learner's function must switch dropout off itself
    torch.manual_seed(0)
    got = accuracy(model, X, y)
    if isinstance(got, torch.Tensor):
        if got.requires_grad:
            raise Hint("your result carries a graph: compute it under torch.no_grad() (and return a float).")
        got = got.item()
    if not isinstance(got, (int, float)):
        raise Hint(f"return a float, got {type(got).__name__}.")
    if abs(got - want) < 1e-6:
        return
    if abs(got - 100 * want) < 1e-4:
        raise Hint("return a fraction between 0 and 1, not a percentage.")
    if abs(got - want * len(y)) < 1e-4:
        raise Hint("you returned the number of correct predictions; divide by the number of examples.")
    raise Hint(f"expected {want:.3f}, got {got:.3f}. Did you call model.eval() first? This model has dropout, "
               "which must be off when measuring. Then: (model(X).argmax(dim=-1) == y).float().mean().item().")
