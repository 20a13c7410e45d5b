"""Checkers for chapter 10: prompt tuning and prefix tuning.

* 10.1 ``prefix_parameters(n, num_layers, hidden_size, num_heads, num_kv_heads)``: what a prefix trains
  on a model with grouped-query attention.
* 10.2 ``extend_for_prompt(attention_mask, labels, n)``: the mask and labels of a batch once n soft
  tokens are put in front of it.
* 10.3 ``prefix_attention(q, k, v, prefix_k, prefix_v)``: one causal attention head that also reads a
  prefix.
"""
from __future__ import annotations

import math

import torch

from ._core import Hint, checker

__all__ = ["check_prefix_parameters", "check_extend_for_prompt", "check_prefix_attention"]

_IGNORE = -100
# (n, layers, hidden, heads, kv heads): SmolLM2-135M, Llama-2-7B (no GQA), Llama-2-70B, a small odd one
_MODELS = [(20, 30, 576, 9, 3), (20, 32, 4096, 32, 32), (10, 80, 8192, 64, 8), (3, 5, 96, 6, 2)]


@checker("Exercise 10.1: the parameters of a prefix")
def check_prefix_parameters(fn) -> None:
    """``fn(n, num_layers, hidden_size, num_heads, num_kv_heads)`` = n · layers · 2 · kv_heads · head_dim."""
    for n, layers, hidden, heads, kv in _MODELS:
        got = fn(n, layers, hidden, heads, kv)
        head_dim = hidden // heads
        want = n * layers * 2 * kv * head_dim
        if isinstance(got, bool) or not isinstance(got, int):
            if isinstance(got, float) and got == want:
                raise Hint("return an int: a parameter count is a whole number (use // for the head size).")
            raise Hint(f"return an int, got {type(got).__name__}.")
        if got == want:
            continue
        where = f"for n={n}, {layers} layers, hidden {hidden}, {heads} heads, {kv} key/value heads"
        if got == n * layers * 2 * hidden:
            raise Hint(f"{where} you counted hidden_size per key and per value; with grouped-query attention "
                       "the cache holds only the key/value heads: num_kv_heads · head_dim numbers each.")
        if got == n * layers * kv * head_dim:
            raise Hint(f"{where}: a prefix has keys AND values, two vectors per layer and virtual token.")
        if got == n * 2 * kv * head_dim:
            raise Hint(f"{where}: every layer has its own prefix; multiply by the number of layers.")
        if got == n * hidden:
            raise Hint(f"{where}: n · hidden is prompt tuning (one vector per virtual token, at the input); a "
                       "prefix sits in every layer's keys and values.")
        if got == n * layers * 2 * heads * head_dim * kv:
            raise Hint(f"{where}: head_dim = hidden_size // num_heads, and the cache holds num_kv_heads of them.")
        raise Hint(f"{where} the count is {want:,}; you returned {got:,}.")


def _batch():
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, 5, 2, -100, -100]])
    return mask, labels


@checker("Exercise 10.2: the mask and labels for a soft prompt")
def check_extend_for_prompt(fn) -> None:
    """``fn(attention_mask, labels, n)`` = (n ones, then the mask; n times -100, then the labels), per row."""
    for n in (3, 1):
        mask, labels = _batch()
        out = fn(mask.clone(), labels.clone(), n)
        if not isinstance(out, tuple) or len(out) != 2:
            raise Hint("return a tuple of two tensors: (attention_mask, labels).")
        got_mask, got_labels = out
        if not isinstance(got_mask, torch.Tensor) or not isinstance(got_labels, torch.Tensor):
            raise Hint("return tensors (torch.cat builds them), not lists.")
        want_mask = torch.cat((torch.ones(2, n, dtype=mask.dtype), mask), dim=1)
        want_labels = torch.cat((torch.full((2, n), _IGNORE, dtype=labels.dtype), labels), dim=1)
        if got_mask.shape != want_mask.shape or got_labels.shape != want_labels.shape:
            raise Hint(f"both should be (batch, n + length) = {tuple(want_mask.shape)}: concatenate along dim=1 "
                       f"(the sequence). You returned {tuple(got_mask.shape)} and {tuple(got_labels.shape)}.")
        if got_mask.dtype != mask.dtype or got_labels.dtype != labels.dtype:
            raise Hint(f"keep the dtypes ({mask.dtype} and {labels.dtype}): build the new parts with "
                       "mask.new_ones(...) and labels.new_full(...).")
        if torch.equal(got_mask, torch.cat((mask, torch.ones(2, n, dtype=mask.dtype)), dim=1)):
            raise Hint("the soft prompt goes in FRONT of the input: put the n ones first, then the mask.")
        if torch.equal(got_mask, torch.cat((torch.zeros(2, n, dtype=mask.dtype), mask), dim=1)):
            raise Hint("the virtual tokens must be attended to: their mask entries are 1, not 0.")
        if not torch.equal(got_mask, want_mask):
            raise Hint(f"with n={n}, the attention mask should be\n{want_mask.tolist()}, you returned\n"
                       f"{got_mask.tolist()}.")
        if torch.equal(got_labels, torch.cat((torch.zeros(2, n, dtype=labels.dtype), labels), dim=1)):
            raise Hint("a virtual token has no target: its label is -100 (ignored by the loss), not 0.")
        if torch.equal(got_labels, torch.cat((labels, torch.full((2, n), _IGNORE, dtype=labels.dtype)), dim=1)):
            raise Hint("the labels must line up with the inputs: the n -100s go in front, like the prompt.")
        if not torch.equal(got_labels, want_labels):
            raise Hint(f"with n={n}, the labels should be\n{want_labels.tolist()}, you returned\n"
                       f"{got_labels.tolist()}.")


def _heads(seed: int, T: int = 5, n: int = 3, d: int = 4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(m, d, generator=g, dtype=torch.float64) for m in (T, T, T, n, n)]


def _attention(q, k, v, pk, pv, scale=True, tril_offset=None, prefix=True, causal=True):
    T, n = q.shape[0], pk.shape[0] if prefix else 0
    keys, values = (torch.cat((pk, k)), torch.cat((pv, v))) if prefix else (k, v)
    scores = q @ keys.T / (math.sqrt(q.shape[1]) if scale else 1.0)  # (T, n + T)
    if causal:
        allowed = torch.ones(T, n + T, dtype=torch.bool).tril(n if tril_offset is None else tril_offset)
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(dim=-1) @ values  # (T, d)


@checker("Exercise 10.3: attention that reads a prefix")
def check_prefix_attention(fn) -> None:
    """``fn(q, k, v, prefix_k, prefix_v)``, q/k/v (T, d) and prefix (n, d), returns the (T, d) output of
    ``softmax(q [P_k; k]^T / sqrt(d) + causal mask) [P_v; v]``, every token seeing the whole prefix."""
    for seed in (0, 1):
        q, k, v, pk, pv = _heads(seed)
        got = fn(q.clone(), k.clone(), v.clone(), pk.clone(), pv.clone())
        if not isinstance(got, torch.Tensor):
            raise Hint(f"return a tensor of shape (T, d), got {type(got).__name__}.")
        want = _attention(q, k, v, pk, pv)
        if got.shape != want.shape:
            raise Hint(f"the output has one row per real token: shape (T, d) = {tuple(want.shape)}, you returned "
                       f"{tuple(got.shape)}. The prefix adds keys and values, not queries.")
        got = got.detach().double()
        if torch.allclose(got, want, atol=1e-6):
            continue
        wrong = {
            "plain": ("the prefix changed nothing: concatenate prefix_k in front of k and prefix_v in front of v.",
                      _attention(q, k, v, pk, pv, prefix=False)),
            "tril0": ("the causal mask is over T × (n + T): every token sees all n prefix positions and the real "
                      "tokens up to itself, i.e. torch.ones(T, n + T).tril(n), not tril(0).",
                      _attention(q, k, v, pk, pv, tril_offset=0)),
            "nomask": ("token t must not see the real tokens after it: mask those scores with -inf (the prefix "
                       "stays visible).", _attention(q, k, v, pk, pv, causal=False)),
            "noscale": ("divide the scores by sqrt(d), d being the size of a head.",
                        _attention(q, k, v, pk, pv, scale=False)),
        }
        for hint, value in wrong.values():
            if torch.allclose(got, value, atol=1e-6):
                raise Hint(hint)
        if torch.allclose(got, _attention(q, k, v, pk, pv, tril_offset=pk.shape[0] - 1), atol=1e-6):
            raise Hint("each token may attend to itself: use tril(n), whose diagonal is kept.")
        raise Hint(f"your output differs from softmax(q [P_k; k]^T / sqrt(d) + mask) [P_v; v] by "
                   f"{float((got - want).abs().max()):.3g} at most.")
