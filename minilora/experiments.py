r"""A fair fine-tuning experiment: MiniLM on the course's sentiment data.  (Chapter 05; reused in 09)

A comparison of configurations (a linear probe, LoRA at several ranks and targets, full
fine-tuning) is fair only if each gets the same treatment and its own best settings:

* **One protocol.** ``train_sentiment(setup, lr, seed)``: a fresh ``load_encoder(num_labels=2)``
  with ``seed_everything(seed)`` (so the same head and the same initial adapters for the same seed),
  the setup (a ``LoRAConfig`` to inject, or ``"full"``), then ``steps`` AdamW steps on length-grouped
  batches of 16 shuffled by ``seed``, the learning rate decaying linearly to 0, the gradient norm
  clipped at 1. One epoch of the 1,600 training reviews is 100 steps.
* **Each configuration's own learning rate**, chosen on the *validation* split: the one with the
  best mean validation accuracy over the seeds.
* **The test split once**, for the chosen learning rate only, and reported as mean ± std over
  at least three seeds.
* **The linear probe** is fitted to convergence on frozen mean-pooled embeddings: a logistic
  regression (scikit-learn, L-BFGS, deterministic) with its regularisation ``C`` chosen on
  validation. It measures how linearly separable the pretrained sentence embeddings already are.

``tools/sweep_ch05.py`` runs the whole sweep and writes ``results/ch05_sweep.csv``; chapter 05 runs
one seed live and checks that it agrees with the file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from .config import LoRAConfig
from .counting import get_nb_trainable_parameters
from .data import load_sentiment, make_loader
from .env import seed_everything
from .inject import inject_lora
from .measure import measure_peak_rss
from .models import load_encoder, mean_pool
from .train import History, evaluate, fit

__all__ = ["STEPS", "BATCH", "SETUPS", "LEARNING_RATES", "PROBE_C", "SentimentRun", "build_model", "train_sentiment",
           "accuracy", "sentence_embeddings", "fit_probe"]

STEPS = 100  # one epoch of the 1,600 training reviews in batches of 16
BATCH = 16
QV = ["query", "value"]
#: The configurations of chapter 05: name -> what to train ("full": everything).
SETUPS: dict[str, LoRAConfig | str] = {
    **{f"LoRA r={r}": LoRAConfig(r=r, lora_alpha=2 * r, target_modules=QV, modules_to_save=["classifier"])
       for r in (1, 4, 8, 16)},
    "LoRA r=8 all-linear": LoRAConfig(r=8, lora_alpha=16, target_modules="all-linear", modules_to_save=["classifier"]),
    "full fine-tune": "full",
}
#: The learning rates each configuration is tried at (a factor of about 2 apart).
LEARNING_RATES = {
    **{name: [1e-3, 2e-3, 5e-3, 1e-2, 2e-2] for name in SETUPS if name.startswith("LoRA r=") and "all" not in name},
    "LoRA r=8 all-linear": [5e-4, 1e-3, 2e-3, 5e-3, 1e-2],
    "full fine-tune": [2e-5, 5e-5, 1e-4, 2e-4, 5e-4],
}
#: The probe's inverse regularisation strengths.
PROBE_C = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0]


@dataclass
class SentimentRun:
    """One training run: the trained model, its counts, its history and its peak memory."""

    name: str
    lr: float
    seed: int
    model: nn.Module
    tokenizer: object
    trainable: int
    total: int
    history: History
    peak_mb: float

    @property
    def fraction(self) -> float:
        return self.trainable / self.total


def build_model(setup: LoRAConfig | str, seed: int = 0) -> tuple[nn.Module, object]:
    """``seed_everything(seed)``, a fresh 2-way MiniLM classifier, and the setup applied to it."""
    if not (isinstance(setup, LoRAConfig) or setup == "full"):
        raise ValueError(f"setup must be a LoRAConfig or 'full', got {setup!r}.")
    seed_everything(seed)
    model, tokenizer = load_encoder(num_labels=2)
    if isinstance(setup, LoRAConfig):
        inject_lora(model, setup)
    return model, tokenizer


def train_sentiment(setup: LoRAConfig | str, lr: float, seed: int = 0, steps: int = STEPS, name: str = "",
                    progress: bool = True) -> SentimentRun:
    """Train one configuration with the chapter's protocol (module docstring) and return the run."""
    model, tokenizer = build_model(setup, seed)
    trainable, total = get_nb_trainable_parameters(model)
    loader = make_loader(load_sentiment("train"), tokenizer, batch_size=BATCH, shuffle=True, seed=seed,
                         group_by_length=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    with measure_peak_rss() as memory:
        history = fit(model, loader, optimizer=optimizer, scheduler=schedule, max_grad_norm=1.0,
                      epochs=math.ceil(steps / len(loader)), max_steps=steps, name=name, progress=progress)
    return SentimentRun(name, lr, seed, model.eval(), tokenizer, trainable, total, history, memory.delta / 1e6)


def accuracy(model: nn.Module, tokenizer, split: str) -> float:
    """Accuracy on ``"validation"`` or ``"test"`` (batches of 100, shortest reviews first)."""
    if split not in ("validation", "test"):
        raise ValueError(f"split must be 'validation' (for choosing) or 'test' (to report), got {split!r}.")
    loader = make_loader(load_sentiment(split), tokenizer, batch_size=100, group_by_length=True)
    return evaluate(model, loader)["accuracy"]


@torch.no_grad()
def sentence_embeddings(model: nn.Module, tokenizer, rows: list[dict], batch_size: int = 100) -> np.ndarray:
    """Frozen mean-pooled embeddings (n, hidden) of the rows' texts, from a bare encoder."""
    model.eval()
    out = []
    for i in range(0, len(rows), batch_size):
        batch = tokenizer([r["text"] for r in rows[i:i + batch_size]], padding=True, truncation=True,
                          max_length=64, return_tensors="pt")
        out.append(mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]))
    return torch.cat(out).numpy()


def fit_probe(features: dict[str, np.ndarray], labels: dict[str, np.ndarray], C: float) -> tuple[LogisticRegression,
                                                                                                  float]:
    """A logistic regression on ``features["train"]``, fitted to convergence; its validation accuracy."""
    probe = LogisticRegression(C=C, max_iter=10_000, tol=1e-6).fit(features["train"], labels["train"])
    return probe, float(probe.score(features["validation"], labels["validation"]))
