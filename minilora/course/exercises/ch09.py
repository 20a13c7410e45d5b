r"""Checkers for chapter 09: choosing rank, alpha and targets; what the adapter learned; DoRA.

* 9.1 ``phi(A1, A2, i, j) -> float``: the LoRA paper's normalized subspace similarity (Hu et al. 2021,
  section 7.2), :math:`\|V_1^{(i)T} V_2^{(j)}\|_F^2 / \min(i, j)` with :math:`V^{(i)}` the top-i
  right-singular vectors of a LoRA A (r, in); as ``minilora.analysis.subspace_similarity``.
* 9.2 ``dora_trainable(shapes, r) -> int``: DoRA's trainable parameters on the linear layers
  ``shapes`` (a list of ``(out_features, in_features)``): :math:`\sum r (d_{in} + d_{out}) + d_{out}`.
* 9.3 ``budget_rank(budget, shapes) -> int``: the LoRA rank that spends exactly ``budget`` trainable
  parameters on ``shapes``, :math:`r = \text{budget} / \sum (d_{in} + d_{out})`; ``ValueError`` when
  no integer rank does.
"""
from __future__ import annotations

import functools
import numbers

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig

from ...analysis import subspace_similarity
from ...config import LoRAConfig
from ...counting import lora_count, meta_model
from ..models import ENCODER_DIR, AssetsMissing, model_path
from ._core import Hint, checker

__all__ = ["MINILM_BUDGET", "MINILM_LAYERS", "minilm_dora_count", "check_phi", "check_dora_count", "check_budget_rank"]

#: Exercise 9.3's budget: LoRA r = 8 on MiniLM's query matrices (6 layers of 384 x 384).
MINILM_BUDGET = 36_864

#: The (out_features, in_features) of each linear layer in one of MiniLM's 6 transformer blocks.
MINILM_LAYERS = {"query": (384, 384), "key": (384, 384), "value": (384, 384), "attention.output.dense": (384, 384),
                 "intermediate.dense": (1536, 384), "output.dense": (384, 1536)}

#: all-MiniLM-L6-v2's architecture, should its cached config be missing (the checkers need no weights).
_MINILM_CONFIG = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                      intermediate_size=1536, max_position_embeddings=512)

TOL = 1e-5  # phi is in [0, 1]; float32 SVDs agree with the float64 reference to about 1e-7


# Exercise 9.1 --------------------------------------------------------------------------------------
def _right(A: torch.Tensor, i: int) -> torch.Tensor:
    return torch.linalg.svd(A.double(), full_matrices=False).Vh[:i].T  # (in, i)


def _left(A: torch.Tensor, i: int) -> torch.Tensor:
    return torch.linalg.svd(A.double(), full_matrices=False).U[:, :i]  # (r, i)


def _phi_mistakes(A1: torch.Tensor, A2: torch.Tensor, i: int, j: int) -> list[tuple[float, str]]:
    """(value, hint) for each typical mistake, on this case."""
    overlap = (_right(A1, i).T @ _right(A2, j)).square().sum().item()  # ||V1^T V2||_F^2
    r1, r2 = min(A1.shape), min(A2.shape)
    every = (_right(A1, r1).T @ _right(A2, r2)).square().sum().item()
    out = []
    if A1.shape[0] == A2.shape[0]:
        left = (_left(A1, i).T @ _left(A2, j)).square().sum().item() / min(i, j)
        out.append((left, "you compared the LEFT-singular vectors (U, the columns of U in torch.linalg.svd): they "
                          "live in R^r, the space of A's rank, which means nothing from one adapter to another. "
                          "Compare the RIGHT-singular vectors, the rows of Vh, which live in R^in: the input "
                          "directions A reads, the same space for every adapter of that layer."))
    out += [
        (overlap ** 0.5 / min(i, j), "square the Frobenius norm: phi = ||V1^T V2||_F^2 / min(i, j), the sum of the "
                                     "squared cosines between the directions (torch.linalg.matrix_norm(...) ** 2, or "
                                     "(V1.T @ V2).pow(2).sum())."),
        (overlap / max(i, j), "divide by min(i, j), not max(i, j): at most min(i, j) directions of the smaller "
                              "subspace can lie in the larger one, so min(i, j) is what makes phi = 1 when one "
                              "subspace contains the other."),
        (overlap, "divide ||V1^T V2||_F^2 by min(i, j): that normalizes phi to [0, 1]."),
        (every / min(i, j), "keep only the top i right-singular vectors of A1 and the top j of A2 (Vh[:i] and "
                            "Vh[:j], sorted by singular value); you used all r of them."),
        (every / min(r1, r2), "keep only the top i right-singular vectors of A1 and the top j of A2 (Vh[:i] and "
                              "Vh[:j], sorted by singular value); you used all r of them."),
    ]
    return out


def _phi_cases() -> list[tuple[torch.Tensor, torch.Tensor, int, int, str]]:
    """(A1, A2, i, j, what) in float32, as LoRA A matrices are trained."""
    g = torch.Generator().manual_seed(9)
    a8, b8, a64 = (torch.randn(r, 384, generator=g) for r in (8, 8, 64))
    a4, a16 = torch.randn(4, 96, generator=g), torch.randn(16, 96, generator=g)
    cases = [(a8, b8, i, j, "random, same rank") for i, j in ((4, 4), (2, 6), (8, 8))]
    cases += [(a8, a64, i, j, "random, ranks 8 and 64") for i, j in ((8, 64), (4, 32), (1, 10), (6, 3))]
    cases += [(a16, a4, i, j, "random, ranks 16 and 4") for i, j in ((16, 4), (5, 2))]
    # Built from one orthonormal basis of R^384: A1 reads directions 0-3, A2 reads 0-7 (0-3 the strongest), A3 8-11.
    V = torch.linalg.qr(torch.randn(384, 12, generator=g)).Q.T  # (12, 384), orthonormal rows
    mix = [torch.linalg.qr(torch.randn(n, n, generator=g)).Q for n in (4, 8, 4)]
    A1 = mix[0] @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0])) @ V[:4]
    A2 = mix[1] @ torch.diag(torch.tensor([9.0, 8.0, 7.0, 6.0, 0.5, 0.4, 0.3, 0.2])) @ V[:8]
    A3 = mix[2] @ torch.diag(torch.tensor([5.0, 2.0, 1.5, 1.0])) @ V[8:]
    cases += [(A1, A2, 4, 4, "sharing a subspace"), (A1, A2, 4, 8, "sharing a subspace"),
              (A1, A3, 4, 4, "orthogonal"), (A2, A3, 8, 4, "orthogonal")]
    return [(a.contiguous(), b.contiguous(), i, j, what) for a, b, i, j, what in cases]


def _call_phi(fn, A1: torch.Tensor, A2: torch.Tensor, i: int, j: int, where: str):
    try:
        return fn(A1.clone(), A2.clone(), i, j)
    except NotImplementedError:
        raise
    except RuntimeError as e:
        if A1.shape[0] == A2.shape[0]:
            raise
        raise Hint(f"{where}: your function raised RuntimeError ({str(e).splitlines()[0]}). The two adapters "
                   f"have different ranks ({A1.shape[0]} and {A2.shape[0]}): if you took the LEFT-singular vectors "
                   "(U), they live in R^r and cannot be compared between ranks. Use the RIGHT-singular vectors, "
                   "the rows of Vh, in R^in: the same space for both.") from None


@checker("Exercise 9.1: subspace similarity phi")
def check_phi(fn) -> None:
    """``fn(A1, A2, i, j)`` must return :math:`\\phi(A_1, A_2, i, j)` as a Python float, within 1e-5 of
    ``minilora.analysis.subspace_similarity``, for A matrices (r, in) of equal and of different ranks,
    a pair whose subspaces contain each other (phi = 1) and an orthogonal pair (phi = 0).

    A 0-d tensor with the right value is refused, with a hint that says so: phi is a number to compare,
    plot and print, and float() also drops the autograd graph an A that requires grad would carry."""
    for A1, A2, i, j, what in _phi_cases():
        where = f"for A1 {tuple(A1.shape)}, A2 {tuple(A2.shape)} ({what}), i={i}, j={j}"
        got = _call_phi(fn, A1, A2, i, j, where)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            value = float(got)
        elif isinstance(got, numbers.Real) and not isinstance(got, bool):
            value = float(got)
        else:
            raise Hint(f"{where}: return phi as one number (a Python float), got {type(got).__name__}"
                       + (f" of shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else "") + ".")
        want = subspace_similarity(A1, A2, i, j)
        if abs(value - want) <= TOL:
            if isinstance(got, torch.Tensor):
                raise Hint(f"{where}: the value is right ({value:.4f}), but it is a tensor: return a Python float, "
                           "float(...) of it (or .item()), as minilora.analysis.subspace_similarity does.")
            continue
        for wrong, hint in _phi_mistakes(A1, A2, i, j):
            if abs(value - wrong) <= TOL:
                raise Hint(f"{where}: {hint}")
        if what == "sharing a subspace":
            raise Hint(f"{where}: A1's directions are all among A2's top ones, so phi should be 1; got {value:.4f}. "
                       "Take the top i right-singular vectors (rows of Vh) of each A, then "
                       "||V1^T V2||_F^2 / min(i, j).")
        if what == "orthogonal":
            raise Hint(f"{where}: A1 and A2 read orthogonal directions of the input, so phi should be 0; got "
                       f"{value:.4f}. Take the right-singular vectors (rows of Vh) of each A.")
        raise Hint(f"{where}: expected phi = {want:.4f}, got {value:.4f}. Take the top i right-singular vectors of A1 "
                   "and the top j of A2 (the first rows of Vh from torch.linalg.svd), then "
                   "||V1^T V2||_F^2 / min(i, j).")


# Exercise 9.2 --------------------------------------------------------------------------------------
def _minilm_config():
    try:
        return AutoConfig.from_pretrained(model_path(ENCODER_DIR))
    except AssetsMissing:
        return BertConfig(**_MINILM_CONFIG)


@functools.lru_cache(maxsize=None)
def minilm_dora_count(r: int = 8, targets: tuple[str, ...] = ("query", "value")) -> tuple[list, int]:
    """``(shapes, trainable)``: the (out, in) of MiniLM's layers named ``targets`` and the trainable
    parameters ``inject_lora`` gives them with DoRA, counted by ``minilora.counting`` on the meta device."""
    model = meta_model(_minilm_config(), AutoModel)
    shapes = [(m.out_features, m.in_features) for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and name.split(".")[-1] in targets]
    trainable, _ = lora_count(model, LoRAConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), use_dora=True))
    return shapes, trainable


def _dora_cases() -> list[tuple[list, int, int, str]]:
    """(shapes, r, want, what)."""
    shapes, counted = minilm_dora_count()
    cases = [(shapes, 8, counted, "MiniLM's query and value, 12 layers (384, 384), counted by minilora.counting")]
    for shapes, r, what in (
        ([(1536, 384), (384, 384)], 4, "MiniLM's intermediate.dense (1536, 384) and a (384, 384) layer"),
        ([(384, 1536)], 2, "MiniLM's output.dense (384, 1536)"),
        ([(1536, 384)] * 3 + [(384, 1536)] * 2 + [(384, 384)], 16, "six layers of three shapes"),
        ([(576, 576), (192, 576), (1536, 576)], 1, "SmolLM2's q_proj, k_proj and up_proj"),
    ):
        cases.append((shapes, r, sum(r * (i + o) + o for o, i in shapes), what))
    return cases


@checker("Exercise 9.2: DoRA's trainable parameters")
def check_dora_count(fn) -> None:
    """``fn(shapes, r)`` must return the int :math:`\\sum r (d_{in} + d_{out}) + d_{out}` over ``shapes``,
    a list of (out_features, in_features); for MiniLM's q, v at r = 8 it must equal what
    ``minilora.counting`` counts after ``inject_lora(..., use_dora=True)`` (78,336)."""
    for shapes, r, want, what in _dora_cases():
        where = f"for {what}, r={r}"
        got = fn(list(shapes), r)
        if isinstance(got, torch.Tensor) or not isinstance(got, numbers.Real) or isinstance(got, bool):
            raise Hint(f"{where}: return the count as a Python int, got {type(got).__name__}.")
        lora = sum(r * (i + o) for o, i in shapes)
        outs, ins = sum(o for o, _ in shapes), sum(i for _, i in shapes)
        if got == want and not isinstance(got, numbers.Integral):
            raise Hint(f"{where}: the value is right ({want:,}), but return an int: a count of parameters.")
        if got == want:
            continue
        full = sum(r * i * o for o, i in shapes)
        if got in (full + outs, full, sum(i * o for o, i in shapes) + outs):
            raise Hint(f"{where}: you counted r * in * out per layer, a full matrix (or r of them). LoRA's A is "
                       "(r, in) and B is (out, r): r * in + out * r = r * (in + out) per layer.")
        if got == lora:
            raise Hint(f"{where}: you counted LoRA's A and B, {lora:,}: DoRA also trains a magnitude vector m, "
                       "one number per output feature of each adapted layer (out_features of them).")
        if got == lora + ins:
            raise Hint(f"{where}: the magnitude m has one entry per OUTPUT feature (a norm per row of the "
                       "(out, in) weight), so out_features numbers per layer, not in_features.")
        if len(shapes) > 1 and got - lora in {o for o, _ in shapes} | {i for _, i in shapes}:
            raise Hint(f"{where}: every adapted layer has its own magnitude vector, out_features numbers each: "
                       f"add it for each of the {len(shapes)} layers, not once for the model.")
        raise Hint(f"{where}: expected {want:,}, got {got:,}. Per layer (out, in): A has r * in numbers, B "
                   "out * r, and the magnitude out.")


# Exercise 9.3 --------------------------------------------------------------------------------------
def _minilm(names: tuple[str, ...]) -> list[tuple[int, int]]:
    return [MINILM_LAYERS[n] for _ in range(6) for n in names]


BUDGET_CASES = [  # (budget, shapes, what); r = budget / sum(in + out), None where that is not an integer
    (MINILM_BUDGET, _minilm(("query",)), "MiniLM's query (6 layers of 384 x 384)"),
    (MINILM_BUDGET, _minilm(("query", "value")), "MiniLM's query and value (12 layers)"),
    (MINILM_BUDGET, _minilm(("query", "key", "value", "attention.output.dense")),
     "MiniLM's query, key, value and attention output (24 layers)"),
    (69_120, _minilm(("intermediate.dense", "output.dense")),
     "MiniLM's MLP: intermediate (1536, 384) and output (384, 1536), 12 layers"),
    (MINILM_BUDGET, _minilm(tuple(MINILM_LAYERS)), "every linear layer of MiniLM (36 layers)"),
]


@checker("Exercise 9.3: the rank a budget buys")
def check_budget_rank(fn) -> None:
    """``fn(budget, shapes)`` must return the int r with r * sum(in + out) == budget, and raise
    ``ValueError`` (with a message) when there is none."""
    for budget, shapes, what in BUDGET_CASES:
        total = sum(i + o for o, i in shapes)
        where = f"for a budget of {budget:,} on {what}"
        try:
            got = fn(budget, list(shapes))
        except NotImplementedError:
            raise
        except Exception as e:  # the exception the learner raises is part of the answer
            if budget % total:
                if not isinstance(e, ValueError):
                    raise Hint(f"{where}: no integer rank spends it exactly, and you raised {type(e).__name__}: "
                               "raise ValueError(...) there, the error for a value that cannot work.") from None
                if not str(e).strip():
                    raise Hint(f"{where}: you raised ValueError, rightly, but without a message: say why, e.g. "
                               "the budget and sum(in + out) it should be a multiple of.") from None
                continue
            if isinstance(e, ValueError):
                raise Hint(f"{where}: r = {budget // total} spends it exactly, but you raised ValueError ({e}). A "
                           "rank-r adapter on an (out, in) layer costs r * (in + out) (A is (r, in), B is (out, r)), "
                           "not r * in * out: divide by sum(in + out).") from None
            raise
        if budget % total:
            raise Hint(f"{where}: r = budget / sum(in + out) = {budget / total:.3f} is not an integer, and you "
                       f"returned {got!r}: raise ValueError with a message when budget % sum(in + out) != 0 "
                       "(no rank spends the budget exactly).")
        want = budget // total
        if isinstance(got, torch.Tensor) or not isinstance(got, numbers.Real) or isinstance(got, bool):
            raise Hint(f"{where}: return the rank as a Python int, got {type(got).__name__}.")
        if got == want:
            if not isinstance(got, numbers.Integral):
                raise Hint(f"{where}: the value is right, but you returned the float {got!r}: a rank is an int. "
                           "After checking budget % total == 0, return budget // total.")
            continue
        products = sum(i * o for o, i in shapes)
        if got in (budget / products, budget // products):
            raise Hint(f"{where}: you divided by sum(in * out), the full matrices. A rank-r adapter costs "
                       "r * (in + out) per layer (A is (r, in), B is (out, r)): divide by sum(in + out).")
        if got in (budget / sum(i for _, i in shapes), budget / sum(o for o, _ in shapes)):
            raise Hint(f"{where}: each layer costs r * in (A) plus out * r (B): divide by sum(in + out), not by "
                       "the sum of one of them.")
        raise Hint(f"{where}: expected r = {want}, got {got!r}: r = budget / sum(in + out) over the layers.")
