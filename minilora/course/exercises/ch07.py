"""Checkers for chapter 07: instruction tuning a chat model.

* 7.1 ``response_labels(input_ids, n_prompt)``: the labels of one example, prompt masked with -100.
* 7.2 ``left_pad_batch(sequences, pad_id)``: left padding for batched generation.
* 7.3 ``response_loss(logits, labels)``: the causal-LM loss over the unmasked tokens only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._core import Hint, checker

__all__ = ["check_response_labels", "check_left_pad_batch", "check_response_loss"]

_IGNORE = -100
_LABEL_CASES = [([1, 9, 4, 7, 5, 2], 3), ([1, 4, 2], 2), ([3, 8, 8, 8, 8, 6, 2, 5], 1), ([5, 6], 0)]


@checker("Exercise 7.1: mask the prompt")
def check_response_labels(fn) -> None:
    """``fn(input_ids, n_prompt)`` must return a list: -100 for the first n_prompt tokens, then the ids."""
    for ids, n in _LABEL_CASES:
        got = fn(list(ids), n)
        if isinstance(got, torch.Tensor):
            got = got.tolist()
        if not isinstance(got, (list, tuple)):
            raise Hint(f"return a list of ints (one label per token), got {type(got).__name__}.")
        got = list(got)
        want = [_IGNORE] * n + ids[n:]
        if got == want:
            continue
        if got[:len(ids) - 1] == want[1:]:
            raise Hint("do not shift the labels yourself: a transformers causal LM shifts them inside "
                       "(the label at position t is compared with the prediction made at t - 1).")
        if len(got) != len(ids):
            raise Hint(f"there must be one label per token: {len(ids)} tokens, you returned {len(got)} labels.")
        if got == ids:
            raise Hint("nothing is masked: the first n_prompt labels must be -100.")
        if got == [0] * n + ids[n:]:
            raise Hint("mask with -100, the ignore_index of cross-entropy; 0 is a real token id.")
        if got == ids[:n] + [_IGNORE] * (len(ids) - n):
            raise Hint("that is the wrong way round: mask the prompt (the first n_prompt tokens) and keep the "
                       "response.")
        if got in ([_IGNORE] * (n + 1) + ids[n + 1:], [_IGNORE] * max(n - 1, 0) + ids[max(n - 1, 0):]):
            raise Hint("off by one: exactly the first n_prompt labels are -100, i.e. labels[:n_prompt].")
        if got[:n] == want[:n] and got[-1] == _IGNORE:
            raise Hint("keep the last token (<|im_end|>) as a label: the model must learn to stop.")
        raise Hint(f"for input_ids={ids}, n_prompt={n} the labels are {want}, you returned {got}.")


@checker("Exercise 7.2: left padding")
def check_left_pad_batch(fn) -> None:
    """``fn(sequences, pad_id)`` must return ``(input_ids, attention_mask)``, padded on the left."""
    cases = [([[5, 6, 7], [8]], 2), ([[4], [4, 9], [1, 2, 3, 4]], 0), ([[7, 7]], 3)]
    for seqs, pad in cases:
        out = fn([list(s) for s in seqs], pad)
        if not isinstance(out, tuple) or len(out) != 2:
            raise Hint("return a tuple of two tensors: (input_ids, attention_mask).")
        ids, mask = (torch.as_tensor(t) for t in out)
        width = max(len(s) for s in seqs)
        if ids.shape != (len(seqs), width) or mask.shape != ids.shape:
            raise Hint(f"both tensors should have shape (number of sequences, longest length) = {(len(seqs), width)}, "
                       f"got {tuple(ids.shape)} and {tuple(mask.shape)}.")
        want_ids = [[pad] * (width - len(s)) + s for s in seqs]
        want_mask = [[0] * (width - len(s)) + [1] * len(s) for s in seqs]
        if ids.tolist() != want_ids and ids.tolist() == [s + [pad] * (width - len(s)) for s in seqs]:
            raise Hint("that is right padding. For generation the padding goes on the LEFT, so that every "
                       "prompt ends in the last column and the new tokens line up.")
        if ids.tolist() != want_ids:
            if ids.tolist() == [[0] * (width - len(s)) + s for s in seqs]:
                raise Hint("pad with pad_id, not with 0.")
            raise Hint(f"for {seqs} with pad_id={pad} input_ids should be {want_ids}, got {ids.tolist()}.")
        if mask.tolist() == [[1 - v for v in row] for row in want_mask]:
            raise Hint("the mask is inverted: 1 marks a real token, 0 a pad.")
        if mask.tolist() != want_mask:
            raise Hint(f"attention_mask should be {want_mask}, got {mask.tolist()}.")
        if ids.dtype != torch.long or mask.dtype != torch.long:
            raise Hint("use integer tensors (dtype=torch.long) for ids and mask.")


def _loss_case(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, T, V = 3, 7, 11
    logits = torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    n_prompt = [2, 4, 3]
    ends = [7, 6, 5]  # rows 2 and 3 are padded on the right
    for i in range(B):
        labels[i, :n_prompt[i]] = _IGNORE
        labels[i, ends[i]:] = _IGNORE
    return logits, labels


@checker("Exercise 7.3: the response-only loss")
def check_response_loss(fn) -> None:
    """``fn(logits, labels)`` must return the mean cross-entropy of the shifted, unmasked tokens."""
    for seed in (0, 1):
        logits, labels = _loss_case(seed)
        got = fn(logits.clone(), labels.clone())
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            raise Hint("return the loss as a one-element tensor (a scalar), e.g. F.cross_entropy(...).")
        got = float(got)
        V = logits.shape[-1]
        s_logits, s_labels = logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1)
        want = float(F.cross_entropy(s_logits, s_labels, ignore_index=_IGNORE))
        if abs(got - want) < 1e-5:
            continue
        unshifted = float(F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=_IGNORE))
        if abs(got - unshifted) < 1e-5:
            raise Hint("shift by one: the logits at position t predict the token at t + 1, so compare "
                       "logits[:, :-1] with labels[:, 1:].")
        per_tok = F.cross_entropy(s_logits, s_labels, ignore_index=_IGNORE, reduction="none").view(labels.shape[0], -1)
        keep = (labels[:, 1:] != _IGNORE).float()
        per_seq = float(((per_tok * keep).sum(1) / keep.sum(1)).mean())
        if abs(got - per_seq) < 1e-5:
            raise Hint("that is the mean over sequences of each sequence's mean. Average over all "
                       "response tokens of the batch at once (what F.cross_entropy does with ignore_index).")
        if abs(got - float((per_tok * keep).sum())) < 1e-4:
            raise Hint("that is the sum; divide by the number of unmasked tokens (or use the mean reduction).")
        zeroed = float(F.cross_entropy(s_logits, s_labels.clamp(min=0)))
        if abs(got - zeroed) < 1e-5:
            raise Hint("the -100 labels must be ignored (ignore_index=-100), not turned into token 0.")
        raise Hint(f"expected {want:.4f}, got {got:.4f}. Shift, flatten, then "
                   "F.cross_entropy(..., ignore_index=-100).")
