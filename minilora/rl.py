r"""Reinforcement learning with a verifiable reward: group-relative REINFORCE ("GRPO-lite").  (Chapter 15)

For a prompt x, sample a group of G answers y_1..y_G from the policy π_θ, score each with a reward r_i that a
program computes (an exact answer, valid JSON), and give each the *group-relative advantage*

    A_i = r_i − mean_j r_j          (``scale=True``: divided by the group's standard deviation as well, as GRPO does).

The policy-gradient loss of the group is

    L(θ) = −(1/G) Σ_i A_i · log π_θ(y_i | x),

whose gradient raises the log-probability of the answers that did better than their group and lowers the
others (REINFORCE, Williams 1992, with the group mean as baseline). The baseline needs no value model: that is
GRPO's saving (Shao et al., 2024). With one gradient step per batch of samples (on-policy) GRPO's probability
ratio is 1, so its clipping does nothing, and with β = 0 it has no KL term: what is left is this loss. A group
whose answers all score the same has zero advantages and teaches nothing. log π_θ(y | x) is the sum over the
answer's tokens (``minilora.preference.get_batch_logps``); GRPO's paper divides by the answer's length instead.

* ``sample`` draws the groups (seeded, leaving torch's global random state as it was) and returns them as a batch
  ready for ``get_batch_logps``: the prompt and the padding labelled -100;
* ``group_advantages`` and ``policy_gradient_loss`` are the two formulas above.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .instruct import IGNORE_INDEX, SYSTEM, end_of_turn_id, left_pad, prompt_text
from .utils import check_bool, check_int, check_number

__all__ = ["sample", "group_advantages", "policy_gradient_loss"]


@torch.no_grad()
def sample(model: nn.Module, tokenizer, instructions: Sequence[str], num_samples: int, max_new_tokens: int,
           temperature: float = 1.0, seed: int = 0, system: str | None = SYSTEM) -> dict:
    """``num_samples`` sampled answers per instruction, prompt-major (rows i·G .. i·G + G − 1 answer prompt i).

    Returns ``{"input_ids", "attention_mask", "labels"}`` (right-padded: prompt, answer, ``<|im_end|>`` if the
    answer ended), ``"completions"`` (the answers' text) and ``"ended"`` (False where ``max_new_tokens`` ran out).

    Args:
        num_samples: G, the group size.
        max_new_tokens: the longest answer, in tokens.
        temperature: > 0; 1 samples from the model's own distribution (no top-k, no top-p).
        seed: the sampling seed; the same seed gives the same answers on the same machine.
    """
    if isinstance(instructions, str) or not instructions:
        raise TypeError("instructions must be a non-empty list of strings; wrap a single one as [instruction].")
    check_int(num_samples, "num_samples")
    check_int(max_new_tokens, "max_new_tokens")
    check_number(temperature, "temperature", low=0, low_open=True, hint="(for greedy answers use instruct.generate)")
    check_int(seed, "seed", minimum=0)
    end = end_of_turn_id(tokenizer)
    prompts = [tokenizer(prompt_text(tokenizer, x, system), add_special_tokens=False)["input_ids"]
               for x in instructions for _ in range(num_samples)]
    ids, mask = left_pad(prompts, end)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                 temperature=float(temperature), top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                 eos_token_id=end, pad_token_id=end)
    finally:
        model.train(was_training)
    answers = [row[:row.index(end) + 1] if end in row else row for row in out[:, ids.shape[1]:].tolist()]
    sequences = [p + a for p, a in zip(prompts, answers)]
    width = max(len(s) for s in sequences)
    batch = {"input_ids": torch.full((len(sequences), width), end, dtype=torch.long),
             "attention_mask": torch.zeros((len(sequences), width), dtype=torch.long),
             "labels": torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)}
    for i, (p, a) in enumerate(zip(prompts, answers)):
        batch["input_ids"][i, :len(p) + len(a)] = torch.tensor(p + a)
        batch["attention_mask"][i, :len(p) + len(a)] = 1
        batch["labels"][i, len(p):len(p) + len(a)] = torch.tensor(a, dtype=torch.long)
    batch["ended"] = [end in a for a in answers]
    batch["completions"] = [tokenizer.decode(a[:-1] if e else a, skip_special_tokens=True,
                                             clean_up_tokenization_spaces=False)
                            for a, e in zip(answers, batch["ended"])]
    return batch


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """A_i = r_i − (its group's mean), for ``rewards`` of shape (groups · group_size,), prompt-major.

    ``scale=True`` divides by the group's standard deviation + ``eps`` too (GRPO; Dr. GRPO argues against it)."""
    check_int(group_size, "group_size", minimum=2)
    check_bool(scale, "scale")
    if not isinstance(rewards, torch.Tensor) or rewards.ndim != 1:
        raise TypeError("rewards must be a 1-D tensor, one reward per sampled answer, prompt-major.")
    if len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group_size}; "
                         "give group_size rewards per prompt.")
    groups = rewards.float().view(-1, group_size)  # (prompts, G)
    advantages = groups - groups.mean(1, keepdim=True)
    if scale:
        advantages = advantages / (groups.std(1, keepdim=True) + eps)
    return advantages.flatten()


def policy_gradient_loss(logps: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """−mean_i A_i · log π(y_i | x): ``logps`` from ``get_batch_logps`` (with gradients), ``advantages`` fixed."""
    tensors = isinstance(logps, torch.Tensor) and isinstance(advantages, torch.Tensor)
    if not tensors or logps.shape != advantages.shape:
        raise ValueError("logps and advantages must be tensors of the same shape (samples,).")
    return -(advantages.detach().to(logps.dtype) * logps).mean()
