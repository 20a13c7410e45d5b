"""Chapter 15's RL runs: group-relative REINFORCE with LoRA on a skill of chapter 07 with a verifiable reward.

``train`` starts from chapter 07's instruction-tuned SmolLM2 (``chat_runs.instruction_tuned``: RL reinforces
what a model sometimes does, and the untuned model never answers in the exact form, so every reward would be 0)
with a LoRA ``LoRAConfig`` (or ``"full"`` fine-tuning) and, for ``steps`` steps, takes ``PROMPTS`` instructions
of one skill (``SKILL``, ISO dates, by default) from chapter 07's ``large_train`` split (a seeded order, no
instruction twice until all were used), samples ``GROUP`` answers to each (``minilora.rl.sample``, seeded by
the run's seed and the step), scores them with ``reward`` (1 for an exact match, ``instruct.exact_match``, else
0; an answer cut by the token budget scores 0), and takes one AdamW step on ``minilora.rl.policy_gradient_loss``
with ``group_advantages``. Nothing else: no value model, no KL term, no clipping (on-policy, one step per
batch). Each step's row records the mean reward of its samples and the share of groups that taught something
(not all answers scored alike). ``accuracy`` scores greedy answers on a split of the same skill
(``large_validation`` to choose rates, ``large_test`` once).
"""
from __future__ import annotations

import torch

from ..instruct import CUT, exact_match, generate, token_budgets
from ..preference import get_batch_logps
from ..rl import group_advantages, policy_gradient_loss, sample
from .chat_runs import start
from .data import load_instructions

__all__ = ["PROMPTS", "GROUP", "SKILLS", "SKILL", "reward", "train", "accuracy"]

PROMPTS, GROUP = 4, 8
SKILLS, SKILL = ("arithmetic", "iso_date", "json", "sentiment"), "iso_date"


def reward(row: dict, answer: str, ended: bool = True) -> float:
    """1.0 if ``answer`` is exactly ``row``'s response (JSON compared as JSON) and it ended, else 0.0."""
    return float(ended and exact_match(answer, row["response"], as_json=row["skill"] == "json"))


def _rows(skill: str, split: str) -> list[dict]:
    if skill not in SKILLS:
        raise ValueError(f"unknown skill {skill!r}; choose one of {', '.join(map(repr, SKILLS))}.")
    return [r for r in load_instructions(split) if r["skill"] == skill]


def train(setup, lr: float, seed: int, steps: int, skill: str = SKILL, temperature: float = 1.0,
          evaluate=None, every: int = 0) -> tuple[torch.nn.Module, object, list[dict]]:
    """(model, tokenizer, one row per step ``{step, reward, informative}``); ``evaluate(model, tok)`` every
    ``every`` steps (0: never) adds its dict to that step's row."""
    rows = _rows(skill, "large_train")
    model, tok = start(setup, seed, tuned=True)
    budget = token_budgets(tok, _rows(skill, "train"))[skill]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    log = []
    for step in range(1, steps + 1):
        while len(order) < PROMPTS:
            order += torch.randperm(len(rows), generator=g).tolist()
        chosen, order = [rows[i] for i in order[:PROMPTS]], order[PROMPTS:]
        batch = sample(model, tok, [r["instruction"] for r in chosen], GROUP, budget, temperature,
                       seed=seed * 100_003 + step)
        rewards = torch.tensor([reward(chosen[i // GROUP], a, e)
                                for i, (a, e) in enumerate(zip(batch["completions"], batch["ended"]))])
        advantages = group_advantages(rewards, GROUP)
        model.train()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = policy_gradient_loss(get_batch_logps(logits, batch["labels"]), advantages)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        informative = (rewards.view(-1, GROUP).std(1) > 0).float().mean().item()
        row = {"step": step, "reward": rewards.mean().item(), "informative": informative}
        if evaluate is not None and every and step % every == 0:
            row.update(evaluate(model, tok))
        log.append(row)
    return model, tok, log


@torch.no_grad()
def accuracy(model, tok, split: str = "large_validation", skill: str = SKILL) -> float:
    """Percent of greedy answers to ``split``'s rows of ``skill`` that earn the reward."""
    rows = _rows(skill, split)
    budget = token_budgets(tok, _rows(skill, "train"))[skill]
    answers = generate(model, tok, [r["instruction"] for r in rows], max_new_tokens=budget, batch_size=64)
    return 100.0 * sum(reward(r, a, not a.endswith(CUT)) for r, a in zip(rows, answers)) / len(rows)
