r"""A fair fine-tuning experiment: MiniLM on the course's sentiment data.  (Chapter 05; reused in 09 and 11)

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

Chapter 11 trains the same protocol on the ``domain`` task (``train_task("domain", ...)``: a 4-way
head) and, with ``train_multitask``, one adapter on both tasks at once: a shared LoRA body and one
head per task, the steps alternating between a sentiment batch and a domain batch, so that it sees
exactly the batches the two single-task runs see together (``2 * STEPS`` steps).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from ..config import LoRAConfig
from ..counting import get_nb_trainable_parameters
from ..inject import inject_lora
from ..loraplus import create_loraplus_optimizer
from ..task_vectors import added
from ..train import History, evaluate, fit, train_step
from ..utils import check_int, check_number, seed_everything
from .data import TASK_LABELS, TASKS, check_task, load_sentiment, make_loader
from .measure import measure_peak_rss
from .models import load_encoder, mean_pool

__all__ = ["STEPS", "BATCH", "SETUPS", "LEARNING_RATES", "PROBE_C", "SentimentRun", "MultiTaskRun", "build_model",
           "train_task", "train_sentiment", "train_multitask", "accuracy", "task_accuracies", "sentence_embeddings",
           "fit_probe"]

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


def build_model(setup: LoRAConfig | str, seed: int = 0, task: str = "sentiment") -> tuple[nn.Module, object]:
    """``seed_everything(seed)``, a fresh MiniLM classifier for ``task`` and the setup applied to it."""
    if not (isinstance(setup, LoRAConfig) or setup == "full"):
        raise ValueError(f"setup must be a LoRAConfig or 'full', got {setup!r}.")
    check_task(task)  # before loading anything
    seed_everything(seed)
    model, tokenizer = load_encoder(num_labels=len(TASK_LABELS[task]))
    if isinstance(setup, LoRAConfig):
        inject_lora(model, setup)
    return model, tokenizer


def _check_run(lr: float, steps: int) -> None:
    """Refuse a bad learning rate or step count before a model is loaded."""
    check_number(lr, "lr", low=0, low_open=True)
    check_int(steps, "steps")


def _schedule(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)


def train_task(task: str, setup: LoRAConfig | str, lr: float, seed: int = 0, steps: int = STEPS, name: str = "",
               progress: bool = True, loraplus_lr_ratio: float | None = None,
               head_lr: float | None = None, batch_size: int = BATCH) -> SentimentRun:
    """Train one configuration on ``task`` with the chapter's protocol (module docstring).

    With ``loraplus_lr_ratio`` (chapter 09) the optimiser is LoRA+'s: ``lr`` for the A matrices and the
    head's weight, ``lr * loraplus_lr_ratio`` for the B matrices and every 1-D parameter (the head's bias
    included), as PEFT groups them. With ``head_lr`` as well, the trained head (``modules_to_save``),
    weight and bias, leaves those groups for one of its own at ``head_lr``: LoRA+'s ratio then acts on
    the adapters alone, and the head trains as it does in plain LoRA at that rate. ``batch_size`` (chapter 14)
    changes the batches, not the rest of the protocol: pass ``steps`` for the number of examples you want seen."""
    _check_run(lr, steps)
    check_int(batch_size, "batch_size")
    if head_lr is not None:
        check_number(head_lr, "head_lr", low=0, low_open=True)
        if loraplus_lr_ratio is None:
            raise ValueError("head_lr gives the head its own group in LoRA+'s optimiser: pass loraplus_lr_ratio "
                             "too, or leave head_lr=None (without LoRA+ the head trains at lr).")
    model, tokenizer = build_model(setup, seed, task)
    trainable, total = get_nb_trainable_parameters(model)
    loader = make_loader(load_sentiment("train"), tokenizer, task=task, batch_size=batch_size, shuffle=True,
                         seed=seed, group_by_length=True)
    if loraplus_lr_ratio is None:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    elif isinstance(setup, LoRAConfig):
        optimizer = create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=loraplus_lr_ratio)
        if head_lr is not None:
            head = [p for n, p in model.named_parameters() if p.requires_grad and ".modules_to_save." in n]
            if not head:
                raise ValueError("head_lr needs a trained head: add modules_to_save=[...] to the LoRAConfig.")
            ids = {id(p) for p in head}
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in ids]
            optimizer.add_param_group({"params": head, "lr": head_lr, "weight_decay": 0.0})
    else:
        raise ValueError("loraplus_lr_ratio needs LoRA adapters: pass a LoRAConfig as the setup, or leave "
                         "loraplus_lr_ratio=None for full fine-tuning.")
    with measure_peak_rss() as memory:
        history = fit(model, loader, optimizer=optimizer, scheduler=_schedule(optimizer, steps), max_grad_norm=1.0,
                      epochs=math.ceil(steps / len(loader)), max_steps=steps, name=name, progress=progress)
    return SentimentRun(name, lr, seed, model.eval(), tokenizer, trainable, total, history, memory.delta / 1e6)


def train_sentiment(setup: LoRAConfig | str, lr: float, seed: int = 0, steps: int = STEPS, name: str = "",
                    progress: bool = True, loraplus_lr_ratio: float | None = None,
                    head_lr: float | None = None) -> SentimentRun:
    """``train_task("sentiment", ...)``: chapter 05's experiment (and chapter 09's)."""
    return train_task("sentiment", setup, lr, seed, steps, name, progress, loraplus_lr_ratio, head_lr)


@dataclass
class MultiTaskRun:
    """One adapter trained on every task: the model (its ``classifier`` is the sentiment head) and a head per task."""

    lr: float
    seed: int
    model: nn.Module
    tokenizer: object
    heads: nn.ModuleDict
    losses: dict[str, list[float]]


def train_multitask(setup: LoRAConfig, lr: float, seed: int = 0, steps: int = 2 * STEPS) -> MultiTaskRun:
    """One LoRA body for both tasks, a head per task; the steps alternate sentiment, domain, sentiment, ...

    Each task's batches are those of ``train_task(task, ..., seed)``; the optimiser, schedule and
    clipping are the protocol's. ``setup`` must not list ``modules_to_save``: the heads are here."""
    if not isinstance(setup, LoRAConfig) or setup.modules_to_save:
        raise ValueError("train_multitask takes a LoRAConfig without modules_to_save: it trains its own head per "
                         f"task (run.heads), got {setup!r}.")
    _check_run(lr, steps)
    model, tokenizer = build_model(setup, seed, "sentiment")
    model.classifier.requires_grad_(True)
    heads = nn.ModuleDict({"sentiment": model.classifier, "domain": nn.Linear(model.config.hidden_size, len(
        TASK_LABELS["domain"]))})
    nn.init.normal_(heads["domain"].weight, std=model.config.initializer_range)
    nn.init.zeros_(heads["domain"].bias)
    loaders = {task: make_loader(load_sentiment("train"), tokenizer, task=task, batch_size=BATCH, shuffle=True,
                                 seed=seed, group_by_length=True) for task in TASKS}
    params = [p for p in model.parameters() if p.requires_grad] + list(heads["domain"].parameters())
    optimizer = torch.optim.AdamW(params, lr=lr)
    schedule, losses = _schedule(optimizer, steps), {task: [] for task in TASKS}
    iterators = {task: iter(()) for task in TASKS}
    model.train()
    for step in range(steps):
        task = TASKS[step % len(TASKS)]
        batch = next(iterators[task], None)
        if batch is None:  # a new epoch of this task's batches
            iterators[task] = iter(loaders[task])
            batch = next(iterators[task])
        model.classifier = heads[task]  # clipping covers the body's adapters and this task's head
        losses[task].append(train_step(model, [batch], optimizer, max_grad_norm=1.0, scheduler=schedule))
    model.classifier = heads["sentiment"]
    return MultiTaskRun(lr, seed, model.eval(), tokenizer, heads, losses)


def accuracy(model: nn.Module, tokenizer, split: str, task: str = "sentiment") -> float:
    """Accuracy on ``task`` over ``"validation"`` or ``"test"`` (batches of 100, shortest reviews first)."""
    if split not in ("validation", "test"):
        raise ValueError(f"split must be 'validation' (for choosing) or 'test' (to report), got {split!r}.")
    loader = make_loader(load_sentiment(split), tokenizer, task=task, batch_size=100, group_by_length=True)
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


def task_accuracies(model: nn.Module, tokenizer, vector: Mapping[str, torch.Tensor] | None,
                    heads: Mapping[str, nn.Module], split: str) -> dict[str, float]:
    """``{task: accuracy}`` on ``split`` of a plain ``load_encoder`` classifier with ``vector`` added
    to its body (``None``: the pretrained body) and each task's head in place of ``classifier``."""
    original = model.classifier
    out = {}
    try:
        with added(model, vector or {}):
            for task, head in heads.items():
                model.classifier = head
                out[task] = accuracy(model, tokenizer, split, task)
    finally:
        model.classifier = original
    return out


def random_like(vector: Mapping[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Ilharco et al.'s control for negation (chapter 11): Gaussian noise with, layer by layer, the
    Frobenius norm of ``vector``'s ΔW, drawn from a generator seeded with ``seed`` (layers in sorted order)."""
    check_int(seed, "seed", minimum=0)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(vector):
        noise = torch.randn(vector[name].shape, generator=g, dtype=vector[name].dtype)
        out[name] = noise * (vector[name].norm() / noise.norm())
    return out
