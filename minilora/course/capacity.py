r"""How much can an adapter store? Random labels on MiniLM inputs.  (Chapter 14)

"LoRA Without Regret" (2025) finds LoRA tracking full fine-tuning until the data outgrow the adapter's
*capacity*. Capacity is measured most plainly by memorisation (Zhang et al., 2017): give ``n`` inputs labels
drawn at random, independent of the text, so that nothing can be *learned* and everything must be *stored*,
and count what a training run fits.

**The inputs.** The first ``n`` training reviews of chapter 05 whose first ``MAX_TOKENS`` tokens are
distinct, truncated to those tokens. Each gets a label 0 or 1 drawn by a generator seeded with ``seed``:
another seed, other labels (and another initialisation).

**The run.** Chapter 05's protocol (``experiments.build_model``: the mean-pooled MiniLM head is trained in
every setup): AdamW, the rate decaying linearly to 0, the gradient norm clipped at 1, batches of ``BATCH``
in a new order each epoch, for ``epochs`` passes over the ``n`` rows. ``"head"`` trains the head alone (the body
frozen): what the classifier stores by itself, beneath every other setup.

**The score.** Accuracy ``a`` on the same ``n`` rows after training, and the information stored,

.. math::  \text{bits} = n \, \big(1 - H_2(a)\big), \qquad H_2(a) = -a \log_2 a - (1-a) \log_2 (1-a)

for ``a >= 1/2`` (0 below): labels fitted at chance carry no information, all ``n`` fitted carry ``n`` bits.
This is a budget-bound capacity (what ``epochs`` passes store), not the asymptotic one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import LoRAConfig
from ..counting import get_nb_trainable_parameters
from ..train import evaluate, fit
from ..utils import check_int, check_number
from .data import load_sentiment
from .experiments import build_model

__all__ = ["MAX_TOKENS", "BATCH", "random_label_batches", "bits_stored", "MemorizationRun", "memorize"]

MAX_TOKENS = 12  # [CLS], ten word pieces and [SEP]
BATCH = 32


def random_label_batches(tokenizer, n: int, seed: int, epoch: int | None = None, batch_size: int = BATCH
                         ) -> list[dict[str, torch.Tensor]]:
    """``n`` distinct truncated training reviews with random labels, as batches ``{input_ids, attention_mask, labels}``.

    The labels depend on ``seed`` only. ``epoch=None`` keeps the reviews' order (for scoring); ``epoch=k``
    orders the rows by a generator seeded with ``(seed, k)``: a new order each epoch of training."""
    check_int(n, "n")
    check_int(seed, "seed", minimum=0)
    check_int(epoch, "epoch", minimum=0, optional=True)
    check_int(batch_size, "batch_size")
    return _batches(_inputs(tokenizer, n), seed, epoch, batch_size)


def _inputs(tokenizer, n: int) -> list[tuple[int, ...]]:
    """The token ids of the first ``n`` training reviews whose truncated ids are distinct."""
    texts, seen = [], set()
    for row in load_sentiment("train"):
        ids = tuple(tokenizer(row["text"], truncation=True, max_length=MAX_TOKENS)["input_ids"])
        if ids not in seen:
            seen.add(ids)
            texts.append(ids)
        if len(texts) == n:
            break
    else:
        raise ValueError(f"n={n} is more than the {len(texts)} distinct truncated training reviews: pass n <= "
                         f"{len(texts)}.")
    return texts


def _batches(texts: list[tuple[int, ...]], seed: int, epoch: int | None, batch_size: int
             ) -> list[dict[str, torch.Tensor]]:
    n = len(texts)
    labels = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed))
    if epoch is None:
        order = torch.arange(n)
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(1_000_003 * seed + epoch))
    batches = []
    for i in range(0, n, batch_size):
        rows = order[i:i + batch_size].tolist()
        width = max(len(texts[j]) for j in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)  # [PAD] is 0
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for k, j in enumerate(rows):
            ids[k, :len(texts[j])] = torch.tensor(texts[j])
            mask[k, :len(texts[j])] = 1
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels[rows]})
    return batches


def bits_stored(accuracy: float, n: int) -> float:
    """``n * (1 - H2(accuracy))``: the information in ``n`` random binary labels fitted at ``accuracy`` (0 at or
    below chance)."""
    check_number(accuracy, "accuracy", low=0, high=1)
    if accuracy <= 0.5:
        return 0.0
    if accuracy >= 1:
        return float(n)
    h = -accuracy * math.log2(accuracy) - (1 - accuracy) * math.log2(1 - accuracy)
    return n * (1 - h)


@dataclass
class MemorizationRun:
    """One memorisation run: the fit it reached, the bits that fit holds, and the parameters that hold them."""

    n: int
    lr: float
    seed: int
    accuracy: float
    bits: float
    trainable: int
    losses: list[float]
    model: nn.Module


def memorize(setup: LoRAConfig | str, n: int, lr: float, seed: int = 0, epochs: int = 10) -> MemorizationRun:
    """Train ``setup`` (a ``LoRAConfig``, ``"full"`` or ``"head"``) on ``n`` random labels; score its fit."""
    if not (isinstance(setup, LoRAConfig) or setup in ("full", "head")):
        raise ValueError(f"setup must be a LoRAConfig, 'full' or 'head', got {setup!r}.")
    check_number(lr, "lr", low=0, low_open=True)
    check_int(n, "n")
    check_int(epochs, "epochs")
    model, tokenizer = build_model("full" if setup == "head" else setup, seed)
    if setup == "head":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("classifier."))
    trainable, _ = get_nb_trainable_parameters(model)
    check_int(seed, "seed", minimum=0)
    texts = _inputs(tokenizer, n)  # tokenized once; checks n before any training
    score = _batches(texts, seed, None, BATCH)
    train = [b for epoch in range(epochs) for b in _batches(texts, seed, epoch, BATCH)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / len(train))
    losses = fit(model, train, optimizer=optimizer, scheduler=schedule, max_grad_norm=1.0, progress=False).train_loss
    acc = evaluate(model.eval(), score)["accuracy"]
    return MemorizationRun(n, lr, seed, acc, bits_stored(acc, n), trainable, losses, model)
