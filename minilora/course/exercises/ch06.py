"""Checkers for chapter 06: swap, stack, merge, and the files.

* 6.1 ``stacked_delta(layer, names)``: the update of a layer with several active adapters.
* 6.2 ``concat_merge(As, Bs, scalings, weights)``: an exact weighted merge, by concatenation.
* 6.3 ``linear_merge(As, Bs, scalings, weights)``: PEFT's ``"linear"`` combination, cross terms included.
* 6.4 ``peft_keys(module_path, is_embedding)``: the two names an adapter file uses for a layer.
"""
from __future__ import annotations

import torch
from torch import nn

from ...layers import LoRALinear
from ._core import Hint, checker


def _close(a, b, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=tol, rtol=1e-4)


def _tensor(x, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise Hint(f"{what} should be a torch.Tensor, got {type(x).__name__}.")
    return x.detach()


def _three_adapter_layer():
    g = torch.Generator().manual_seed(6)
    layer = LoRALinear(nn.Linear(7, 5), r=2, lora_alpha=4, adapter_name="a")
    layer.update_layer("b", r=3, lora_alpha=12)
    layer.update_layer("c", r=1, lora_alpha=1)
    with torch.no_grad():
        for name in layer.adapters:
            B = layer.lora_B[name].weight
            B.copy_(torch.randn(B.shape, generator=g))
    return layer


@checker("Exercise 6.1: the update of stacked adapters")
def check_stacked_delta(fn) -> None:
    """``fn(layer, names)`` must return ``sum(scaling[n] * B[n] @ A[n] for n in names)``, shape (out, in)."""
    layer = _three_adapter_layer()
    with torch.no_grad():
        AB = {n: layer.lora_B[n].weight @ layer.lora_A[n].weight for n in layer.adapters}
        for names in (["a"], ["a", "b"], ["c", "b"], ["a", "b", "c"]):
            got = _tensor(fn(layer, list(names)), "stacked_delta")
            want = sum(layer.scaling[n] * AB[n] for n in names)
            if _close(got, want):
                continue
            where = f"for names={names}"
            if got.shape == want.T.shape and got.shape != want.shape:
                raise Hint(f"{where} the shape should be (out, in) = {tuple(want.shape)}, like the weight: "
                           "use B @ A, not A.T @ B.T.")
            if _close(got, sum(AB[n] for n in names)):
                raise Hint(f"{where}: multiply each B @ A by its own scaling, layer.scaling[name] = lora_alpha / r.")
            if _close(got, layer.scaling[names[0]] * sum(AB[n] for n in names)):
                raise Hint(f"{where}: each adapter has its own scaling (its own alpha and r); use layer.scaling[n].")
            if _close(got, sum(layer.scaling[n] * AB[n] for n in layer.adapters)):
                raise Hint(f"{where}: sum only the adapters in `names` (the active ones), not every adapter "
                           "the layer holds.")
            if _close(got, layer.scaling[names[0]] * AB[names[0]]):
                raise Hint(f"{where}: stacking adds the updates of ALL the names, not just the first.")
            raise Hint(f"{where} your update differs from the sum of scaling * B @ A by "
                       f"{float((got.double() - want.double()).abs().max()):.3g} at most.")


def _merge_case(seed: int):
    g = torch.Generator().manual_seed(seed)
    ranks, d_in, d_out = (2, 2, 2) if seed == 0 else (2, 3, 1), 6, 5
    As = [torch.randn(r, d_in, generator=g, dtype=torch.float64) for r in ranks]
    Bs = [torch.randn(d_out, r, generator=g, dtype=torch.float64) for r in ranks]
    return As, Bs, [2.0, 0.5, 1.0], [0.7, -0.4, 1.5]


@checker("Exercise 6.2: an exact weighted merge by concatenation")
def check_concat_merge(fn) -> None:
    """``fn(As, Bs, scalings, weights)`` must return ``(A, B)`` with ``B @ A = sum w_i s_i B_i A_i``."""
    for seed in (0, 1):
        As, Bs, s, w = _merge_case(seed)
        out = fn([a.clone() for a in As], [b.clone() for b in Bs], list(s), list(w))
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise Hint("return a pair (A, B).")
        A, B = (_tensor(x, n) for x, n in zip(out, ("A", "B")))
        total = sum(a.shape[0] for a in As)
        if A.shape != (total, As[0].shape[1]) or B.shape != (Bs[0].shape[0], total):
            raise Hint(f"A should be ({total}, {As[0].shape[1]}) and B ({Bs[0].shape[0]}, {total}): stack the A's "
                       "on top of each other (torch.cat(dim=0)) and the B's side by side (dim=1); the rank is "
                       f"the sum of the ranks, {total}. You returned A {tuple(A.shape)}, B {tuple(B.shape)}.")
        want = sum(wi * si * b @ a for a, b, si, wi in zip(As, Bs, s, w))
        got = B.double() @ A.double()
        if _close(got, want):
            continue
        if _close(got, sum(wi * wi * si * b @ a for a, b, si, wi in zip(As, Bs, s, w))):
            raise Hint("the weights are applied twice (to the A's and to the B's): put w_i * s_i on one factor only.")
        if _close(got, sum(b @ a * si for a, b, si in zip(As, Bs, s))):
            raise Hint("you forgot the weights w_i.")
        if _close(got, sum(wi * b @ a for a, b, wi in zip(As, Bs, w))):
            raise Hint("you forgot each adapter's scaling s_i = alpha_i / r_i.")
        raise Hint(f"B @ A differs from sum_i w_i s_i B_i A_i by {float((got - want).abs().max()):.3g} at most.")


def _linear_case(seed: int):
    g = torch.Generator().manual_seed(10 + seed)
    As = [torch.randn(3, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    Bs = [torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    return As, Bs, [2.0, 0.5], [0.7, 0.4] if seed == 0 else [0.7, -0.4]


@checker("Exercise 6.3: PEFT's linear combination, and its cross terms")
def check_linear_merge(fn) -> None:
    """``fn(As, Bs, scalings, weights)`` must return PEFT's ``"linear"`` ``(A, B)``: the sums of
    ``c_i A_i`` and ``|c_i| B_i`` with ``c_i = sign(w_i s_i) sqrt(|w_i s_i|)``."""
    for seed in (0, 1):
        As, Bs, s, w = _linear_case(seed)
        out = fn([a.clone() for a in As], [b.clone() for b in Bs], list(s), list(w))
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise Hint("return a pair (A, B).")
        A, B = (_tensor(x, n) for x, n in zip(out, ("A", "B")))
        if A.shape != As[0].shape or B.shape != Bs[0].shape:
            raise Hint(f"A and B keep the inputs' shapes, {tuple(As[0].shape)} and {tuple(Bs[0].shape)}: 'linear' "
                       "sums the factors; it does not concatenate them (that is 'cat').")
        c = [(wi * si) ** 0.5 if wi * si >= 0 else -((-wi * si) ** 0.5) for si, wi in zip(s, w)]
        got = B.double() @ A.double()
        want = sum(abs(ci) * b for ci, b in zip(c, Bs)) @ sum(ci * a for ci, a in zip(c, As))
        if _close(got, want):
            continue
        sign_on_b = sum(ci * b for ci, b in zip(c, Bs)) @ sum(abs(ci) * a for ci, a in zip(c, As))
        if _close(got, sign_on_b):
            raise Hint("PEFT puts the sign of w_i s_i on the A side. On the B side each term B_i A_i keeps its sign, "
                       "but the cross terms B_i A_j do not: the update differs.")
        if _close(got, sum(wi * si * b @ a for a, b, si, wi in zip(As, Bs, s, w))):
            raise Hint("your B @ A is the exact weighted sum: that is 'cat' (or 'svd'). PEFT's 'linear' sums the A's "
                       "and the B's separately, each weighted by sqrt(|w_i s_i|), which adds cross terms.")
        squared = sum(wi * si * b for b, si, wi in zip(Bs, s, w)) @ sum(wi * si * a for a, si, wi in zip(As, s, w))
        if _close(got, squared):
            raise Hint("you weighted both factors by w_i s_i, so each term gets (w_i s_i)^2: weight each factor by "
                       "the square root, sqrt(|w_i s_i|).")
        if _close(got, sum(abs(ci) * b for ci, b in zip(c, Bs)) @ sum(abs(ci) * a for ci, a in zip(c, As))):
            raise Hint("a negative weight must stay negative: put the sign of w_i s_i on one factor only (A, in "
                       "PEFT); on both it cancels, on neither it is lost.")
        if _close(got, sum(abs(wi) ** 0.5 * b for b, wi in zip(Bs, w)) @
                  sum((1 if wi >= 0 else -1) * abs(wi) ** 0.5 * a for a, wi in zip(As, w))):
            raise Hint("you forgot each adapter's scaling s_i: the coefficient is sqrt(|w_i * s_i|).")
        raise Hint(f"for weights {w} and scalings {s}, B @ A differs from PEFT's 'linear' by "
                   f"{float((got - want).abs().max()):.3g} at most.")


@checker("Exercise 6.4: the names in an adapter file")
def check_peft_keys(fn) -> None:
    """``fn(module_path, is_embedding)`` must return PEFT's ``(A key, B key)`` for that layer."""
    for path, emb in (("bert.encoder.layer.0.attention.self.query", False), ("model.embed_tokens", True),
                      ("transformer.h.3.attn.c_attn", False)):
        out = fn(path, emb)
        if not isinstance(out, (tuple, list)) or len(out) != 2 or not all(isinstance(k, str) for k in out):
            raise Hint("return a pair of strings (the A key, the B key).")
        want = (f"base_model.model.{path}.lora_embedding_A", f"base_model.model.{path}.lora_embedding_B") if emb \
            else (f"base_model.model.{path}.lora_A.weight", f"base_model.model.{path}.lora_B.weight")
        got = tuple(out)
        if got == want:
            continue
        if any(".default" in k for k in got):
            raise Hint("the adapter name ('default') is not in the file: PEFT strips it, so an adapter can be "
                       "loaded under any name.")
        if not all(k.startswith("base_model.model.") for k in got):
            raise Hint("every key starts with 'base_model.model.' (PeftModel -> LoraModel -> your model).")
        if got == want[::-1]:
            raise Hint("A first, then B.")
        if emb and all(k.endswith(".weight") for k in got):
            raise Hint("embedding adapters are plain parameters, lora_embedding_A / lora_embedding_B, "
                       "with no '.weight' after them.")
        if not emb and any("embedding" in k for k in got):
            raise Hint(f"{path} is a linear layer: its keys are lora_A.weight and lora_B.weight.")
        if not emb and not all(k.endswith(".weight") for k in got):
            raise Hint("in PEFT lora_A and lora_B are nn.Linear modules, so their keys end in '.weight'.")
        raise Hint(f"for {path!r} (embedding={emb}) the keys are {want}; you returned {got}.")


__all__ = ["check_stacked_delta", "check_concat_merge", "check_linear_merge", "check_peft_keys"]
