r"""What a fine-tuned model forgot, measured two ways.  (Chapter 14)

Biderman et al. ("LoRA Learns Less and Forgets Less", 2024) score *learning* on the new task and
*forgetting* on what the base model knew, and plot one against the other. Two measures of the second:

* **A multiple-choice quiz** (``data/forgetting/general_quiz.jsonl``) scored as lm-eval-harness scores one: each choice
  :math:`c` is ranked by its log-likelihood after the question, :math:`\sum_t \log p(c_t \mid q, c_{<t})`,
  with the prompt ``"Question: ...\nAnswer:"`` and the choice after a space; the model's answer is the
  highest. Accuracy is the share of questions answered right (chance: 25%).
* **Drift from the base model's own behaviour** (``data/forgetting/neutral_prompts.jsonl``): the base model's greedy
  continuations of neutral openings; the mean negative log-likelihood per token that a model gives them,
  :math:`-\frac{1}{T}\sum_t \log p(y_t \mid x, y_{<t})`. The base model finds its own text likely; the more a
  fine-tuned model's distribution moved away from it, the higher this gets. Forgetting is the increase.

Both are forward passes only (no generation), deterministic, and take a few seconds on SmolLM2.
"""
from __future__ import annotations

import torch
from torch import nn

from ..utils import check_int
from .data import data_dir, load_jsonl

__all__ = ["load_quiz", "load_neutral", "choice_logprobs", "quiz_accuracy", "continuation_nll"]


def _jsonl(name: str) -> list[dict]:
    path = data_dir("forgetting") / name
    if not path.exists():
        raise FileNotFoundError(f"{path.name} is missing: run python -m tools.make_forgetting_data.")
    return load_jsonl(path)


def load_quiz() -> list[dict]:
    """The general-knowledge quiz: rows of ``question``, ``choices`` (4), ``answer`` (index), ``family``."""
    return _jsonl("general_quiz.jsonl")


def load_neutral() -> list[dict]:
    """Neutral openings (``prompt``) and SmolLM2-135M-Instruct's greedy continuations (``continuation``)."""
    return _jsonl("neutral_prompts.jsonl")


def _scored_sums(model: nn.Module, pairs: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int,
                 mean: bool) -> list[float]:
    """For each (context ids, target ids): the sum (or mean) of log p(target | context), right-padded batches."""
    out = []
    device = next(model.parameters()).device
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        width = max(len(c) + len(t) for c, t in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (c, t) in enumerate(chunk):
            ids[i, :len(c) + len(t)] = torch.tensor(c + t)
            mask[i, :len(c) + len(t)] = 1
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        for i, (c, t) in enumerate(chunk):
            positions = torch.arange(len(c) - 1, len(c) + len(t) - 1)  # the logits that predict the target
            values = logp[i, positions, torch.tensor(t)]
            out.append((values.mean() if mean else values.sum()).item())
    return out


def choice_logprobs(model: nn.Module, tokenizer, items: list[dict], batch_size: int = 64) -> list[list[float]]:
    """Each item's four choices' log-likelihoods after ``"Question: <question>\\nAnswer:"`` (lm-eval's way:
    context and continuation tokenized apart, the choice after a space)."""
    check_int(batch_size, "batch_size")
    pairs = []
    for item in items:
        context = tokenizer(f"Question: {item['question']}\nAnswer:", add_special_tokens=False).input_ids
        pairs += [(context, tokenizer(" " + c, add_special_tokens=False).input_ids) for c in item["choices"]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sums = _scored_sums(model, pairs, pad, batch_size, mean=False)
    return [sums[4 * i:4 * i + 4] for i in range(len(items))]


def quiz_accuracy(model: nn.Module, tokenizer, items: list[dict] | None = None, batch_size: int = 64) -> float:
    """Percent of the quiz's questions whose right choice has the highest log-likelihood."""
    items = load_quiz() if items is None else items
    scores = choice_logprobs(model, tokenizer, items, batch_size)
    right = sum(max(range(4), key=lambda k: s[k]) == item["answer"] for s, item in zip(scores, items))
    return 100.0 * right / len(items)


def continuation_nll(model: nn.Module, tokenizer, rows: list[dict] | None = None, batch_size: int = 40) -> float:
    """Mean negative log-likelihood per token of the rows' continuations after their prompts (nats)."""
    rows = load_neutral() if rows is None else rows
    pairs = [(tokenizer(r["prompt"], add_special_tokens=False).input_ids,
              tokenizer(r["continuation"], add_special_tokens=False).input_ids) for r in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    means = _scored_sums(model, pairs, pad, batch_size, mean=True)
    return -sum(means) / len(means)
