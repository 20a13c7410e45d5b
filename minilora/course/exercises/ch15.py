"""Checkers for chapter 15: preference tuning and RL with LoRA.

* 15.1 ``dpo_by_hand(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)``: the DPO loss
  of each pair, −log σ(β·[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)]).
* 15.2 ``sequence_logps(logits, labels)``: each sequence's summed log-probability of its labelled tokens, the
  logits at position t predicting the token at t + 1, labels of −100 (the prompt, the padding) left out.
* 15.3 ``group_advantage(rewards, group_size)``: each sampled answer's reward minus the mean of its own group,
  rewards prompt-major (the first ``group_size`` answer the first prompt).
"""
from __future__ import annotations

import torch

from ...preference import dpo_loss, get_batch_logps
from ...rl import group_advantages
from ._core import Hint, checker

__all__ = ["check_dpo_by_hand", "check_sequence_logps", "check_group_advantage"]

TWO_PAIRS = (torch.tensor([-12.0, -30.0]), torch.tensor([-15.0, -28.0]),  # log π(chosen), log π(rejected)
             torch.tensor([-13.0, -29.0]), torch.tensor([-14.0, -29.5]))  # the same under the reference


def _tensor(got, n: int, what: str) -> torch.Tensor:
    if not isinstance(got, torch.Tensor):
        raise Hint(f"return a tensor ({what}), got {type(got).__name__}.")
    if got.shape != (n,):
        raise Hint(f"return one value per {what.split(' per ')[-1]}: shape ({n},), got {tuple(got.shape)}"
                   + (" (a mean over them is what training backpropagates, not what is asked)." if got.ndim == 0
                      else "."))
    return got.detach().float()


@checker("Exercise 15.1: the DPO loss by hand")
def check_dpo_by_hand(fn) -> None:
    g = torch.Generator().manual_seed(15)
    cases = [(TWO_PAIRS, 0.1), (TWO_PAIRS, 0.5)] + [
        (tuple(-20 * torch.rand(4, generator=g) for _ in range(4)), b) for b in (0.1, 1.0)]
    for (pc, pr, rc, rr), beta in cases:
        got = _tensor(fn(pc.clone(), pr.clone(), rc.clone(), rr.clone(), beta), len(pc), "loss per pair")
        want = dpo_loss(pc, pr, rc, rr, beta)[0]
        if torch.allclose(got, want, atol=1e-5):
            continue
        margin = beta * ((pc - rc) - (pr - rr))
        if torch.allclose(got, -torch.nn.functional.logsigmoid(-margin), atol=1e-5):
            raise Hint("the loss rises as the chosen answer gains on the rejected one: it must fall. Subtract the "
                       "rejected answer's log-ratio from the chosen one's, inside −log σ(·).")
        if torch.allclose(got, -torch.nn.functional.logsigmoid(beta * (pc - pr)), atol=1e-5):
            raise Hint("the reference is missing: each answer's score is log π − log π_ref, the implicit reward "
                       "β·log(π/π_ref), not log π alone.")
        if torch.allclose(got, -torch.nn.functional.logsigmoid(margin / beta), atol=1e-5):
            raise Hint(f"β is missing: multiply the difference of log-ratios by beta (here {beta}).")
        if torch.allclose(got, -torch.sigmoid(margin), atol=1e-5) or torch.allclose(got, 1 - torch.sigmoid(margin),
                                                                                   atol=1e-5):
            raise Hint("take the logarithm: the loss is −log σ(margin) (torch.nn.functional.logsigmoid), the "
                       "negative log-likelihood of the Bradley–Terry model.")
        raise Hint(f"for the pairs {pc.tolist()} / {pr.tolist()} (policy) and {rc.tolist()} / {rr.tolist()} "
                   f"(reference) at beta={beta} the losses are {want.tolist()}, you returned {got.tolist()}.")


def _batch(seed: int, batch: int, length: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=g)
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    for i in range(batch):  # a prompt of 2 + i tokens and i tokens of padding, both labelled −100
        labels[i, :2 + i] = -100
        if i:
            labels[i, length - i:] = -100
    return logits, labels


@checker("Exercise 15.2: sequence log-probabilities with a prompt mask")
def check_sequence_logps(fn) -> None:
    for seed, (batch, length, vocab) in enumerate(((2, 7, 5), (3, 9, 11), (4, 12, 6))):
        logits, labels = _batch(seed, batch, length, vocab)
        got = _tensor(fn(logits.clone(), labels.clone()), batch, "log-probability per sequence")
        want = get_batch_logps(logits, labels)
        if torch.allclose(got, want, atol=1e-4):
            continue
        logp = logits.log_softmax(-1)
        mask = labels != -100
        unshifted = (logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask).sum(-1)
        if torch.allclose(got, unshifted, atol=1e-4):
            raise Hint("shift by one: the logits at position t predict the token at t + 1, so pair logits[:, :-1] "
                       "with labels[:, 1:].")
        if torch.allclose(got, get_batch_logps(logits, labels, average_log_prob=True), atol=1e-4):
            raise Hint("sum over the answer's tokens, do not average: log π(y | x) is the log of a product of "
                       "per-token probabilities (DPO's average_log_prob=False).")
        shifted_labels = labels[:, 1:]
        every = logp[:, :-1].gather(-1, shifted_labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).sum(-1)
        if torch.allclose(got, every, atol=1e-4):
            raise Hint("leave out the labels of −100 (the prompt and the padding): multiply by the mask "
                       "labels[:, 1:] != -100 before summing.")
        if (got > 0).any():
            raise Hint("a log-probability is never positive: take log_softmax over the vocabulary, not the raw "
                       "logits or softmax.")
        raise Hint(f"for logits of shape {tuple(logits.shape)} the sums are {want.tolist()}, you returned "
                   f"{got.tolist()}.")


@checker("Exercise 15.3: the group-relative advantage")
def check_group_advantage(fn) -> None:
    cases = [(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0]), 3), (torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 1.0]), 2),
             (torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.5, 0.25, 0.25]), 4)]
    for rewards, group in cases:
        got = _tensor(fn(rewards.clone(), group), len(rewards), "advantage per answer")
        want = group_advantages(rewards, group)
        if torch.allclose(got, want, atol=1e-6):
            continue
        if torch.allclose(got, rewards - rewards.mean(), atol=1e-6):
            raise Hint("the baseline is each prompt's own group, not the whole batch: view the rewards as "
                       "(prompts, group_size) and subtract each row's mean.")
        if torch.allclose(got, (rewards.view(group, -1) - rewards.view(group, -1).mean(0)).flatten(), atol=1e-6):
            raise Hint("the rewards are prompt-major: the first group_size of them answer the first prompt, so "
                       "view them as (-1, group_size), one row per prompt.")
        if torch.allclose(got, group_advantages(rewards, group, scale=True), atol=1e-4):
            raise Hint("subtract the group's mean only: dividing by its standard deviation is GRPO's scaling, "
                       "which this exercise (and Dr. GRPO) leaves out.")
        raise Hint(f"for rewards {rewards.tolist()} in groups of {group} the advantages are {want.tolist()}, you "
                   f"returned {got.tolist()}.")
