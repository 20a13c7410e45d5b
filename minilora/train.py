r"""A small, general training loop.  (Chapter 03; reused by chapters 05 and 07)

Training minimises the mean loss over the data by gradient steps on the *trainable* parameters
:math:`\theta` only (with LoRA: the ``A`` and ``B`` matrices; the frozen base weights have
``requires_grad=False`` and are never handed to the optimiser). For each mini-batch:

.. math::  g_t = \nabla_\theta \frac{1}{|b|} \sum_{i \in b} \ell(f_\theta(x_i), y_i)

and AdamW (the default optimiser) keeps running moments of the gradient and takes the step

.. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,

    \theta_t = \theta_{t-1} - \eta \Big( \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t)} + \epsilon}
               + \lambda\, \theta_{t-1} \Big)

with learning rate :math:`\eta` and *decoupled* weight decay :math:`\lambda` (0 by default).

**The batch protocol.** ``train_loader`` (and ``val_loader``) is anything that can be iterated once
per epoch -- a ``DataLoader``, or a plain list of batches -- yielding either

* a tuple ``(x, y)``: the loss is ``loss_fn(model(x), y)`` (default: cross-entropy); if ``model(x)``
  returns an object with ``.logits`` (a transformers output), those are used; or
* a dict (or a transformers ``BatchEncoding``) such as ``{"input_ids": ..., "attention_mask": ...,
  "labels": ...}``: the model is called as ``model(**batch)`` and ``outputs.loss`` is used, as a
  transformers model computes it from ``"labels"``. If ``loss_fn`` is given instead, ``"labels"`` is
  taken out of the dict and the loss is ``loss_fn(outputs.logits, labels)``.

**One step** is ``train_step(model, [batch, ...], optimizer)``: the mean loss of its micro-batches,
backward, optional clipping, the optimiser's step; ``fit`` is a loop of them. An optimiser of your own
must hold every trainable parameter: one built before ``inject_lora`` holds only the old weights (now
frozen) and would train nothing, so ``fit`` and ``train_step`` refuse it before any step.

Tensors are moved to the device of the model's first parameter. Nothing is seeded here: seeding
(``minilora.seed_everything``) and shuffling are the caller's job.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .utils import check_bool, check_int, check_number

__all__ = ["History", "evaluate", "fit", "train_step"]


@dataclass
class History:
    """What ``fit`` records. ``plots.loss_curves`` draws it.

    ``train_loss``, ``step_time`` and ``lr`` have one entry per optimiser step; ``val_step`` holds
    the step after which ``val_loss`` / ``val_accuracy`` were measured (accuracy is ``nan`` when
    the task is not classification)."""

    name: str = ""
    n_trainable: int = 0
    train_loss: list[float] = field(default_factory=list)
    step_time: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    epoch_end_step: list[int] = field(default_factory=list)

    @property
    def steps(self) -> int:
        """Number of optimiser steps taken."""
        return len(self.train_loss)

    @property
    def total_time(self) -> float:
        """Seconds spent in training steps (evaluation excluded)."""
        return float(sum(self.step_time))

    @property
    def final_val_accuracy(self) -> float:
        """The last validation accuracy (``nan`` if there was no validation)."""
        return self.val_accuracy[-1] if self.val_accuracy else math.nan


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _logits(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


def _check_batch(batch: Any) -> None:
    if not (isinstance(batch, Mapping) or isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError(f"a batch must be a tuple (x, y) or a dict with 'labels', got {type(batch).__name__}"
                         + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "") + ".")


def _forward(model: nn.Module, batch: Any, loss_fn: Callable | None
             ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, int]:
    """Run one batch; return (loss, logits, labels, batch size) following the batch protocol."""
    _check_batch(batch)
    if isinstance(batch, Mapping):
        batch = dict(batch)
        if loss_fn is not None and "labels" not in batch:
            raise ValueError("a dict batch with loss_fn needs a 'labels' entry.")
        labels = batch.pop("labels") if loss_fn is not None else batch.get("labels")
        out = model(**batch)
        logits = _logits(out) if loss_fn is not None else getattr(out, "logits", None)
        loss = loss_fn(logits, labels) if loss_fn is not None else getattr(out, "loss", None)
        if loss is None:
            raise ValueError("the model returned no .loss: put 'labels' in the dict batch "
                             "(transformers models then compute the loss), or pass loss_fn.")
        return loss, logits, labels, len(next(v for v in batch.values() if isinstance(v, torch.Tensor)))
    x, y = batch
    logits = _logits(model(x))
    return (loss_fn or F.cross_entropy)(logits, y), logits, y, len(y)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, loss_fn: Callable | None = None) -> dict[str, float]:
    """Mean loss and accuracy over ``loader`` (same batch protocol as ``fit``), in eval mode.

    The loss is averaged over batches weighted by batch size. Accuracy is the fraction of
    ``argmax(logits) == label`` for classification (2-D logits, 1-D labels), else ``nan``."""
    was_training = model.training
    model.eval()
    device = _device(model)
    total, loss_sum, correct, n_acc = 0, 0.0, 0, 0
    try:
        for batch in loader:
            loss, logits, labels, n = _forward(model, _to(batch, device), loss_fn)
            loss_sum += float(loss) * n
            total += n
            if logits is not None and labels is not None and logits.ndim == 2 and labels.ndim == 1:
                correct += int((logits.argmax(-1) == labels).sum())
                n_acc += len(labels)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("the evaluation loader yielded no batches.")
    return {"loss": loss_sum / total, "accuracy": correct / n_acc if n_acc else math.nan}


def _check_optimizer(model: nn.Module, optimizer: Any) -> None:
    """A TypeError unless ``optimizer`` is a torch optimiser; a ValueError unless it holds (by identity) every
    trainable parameter of ``model``. Frozen ones besides are harmless: an optimiser skips a parameter without
    a gradient, so ``AdamW(model.parameters())`` built after ``inject_lora`` is fine."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}; e.g. "
                        "torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3).")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        shown = ", ".join(map(repr, missing[:3])) + (", ..." if len(missing) > 3 else "")
        none = " (it holds frozen parameters only)" if len(missing) == len(trainable) else ""
        raise ValueError(f"the optimizer does not hold {len(missing)} of the model's {len(trainable)} trainable "
                         f"parameters ({shown}){none}, so they would never change: it was built before inject_lora, "
                         "set_adapter or mark_only_lora_as_trainable made them trainable. Build it after that, "
                         "from the trainable parameters: "
                         "torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=...).")


def train_step(model: nn.Module, batches: Sequence, optimizer: torch.optim.Optimizer, *,
               loss_fn: Callable | None = None, max_grad_norm: float | None = None, scheduler: Any = None) -> float:
    """One optimiser step on the micro-batches ``batches`` (``[batch]`` for a plain step); returns their mean loss.

    Stale gradients are discarded; each micro-batch's loss is divided by ``len(batches)`` before
    ``backward``, so the gradients add up to the gradient of the mean loss (gradient accumulation); the
    total gradient norm of the model's trainable parameters is clipped to ``max_grad_norm`` (if given);
    the optimiser steps; the gradients are set to None; ``scheduler`` (if given) steps. The model runs in
    the mode it is in (call ``model.train()`` first; ``fit`` does). A non-finite loss raises
    ``FloatingPointError``. ``fit`` is a loop of these steps; chapter 11's multi-task loop too."""
    if not isinstance(batches, (list, tuple)):
        raise TypeError(f"batches must be a list of batches, one per micro-batch, got {type(batches).__name__}; "
                        "pass [batch] for a step on one batch.")
    if not batches:
        raise ValueError("batches is empty: a step needs at least one batch; pass [batch].")
    for batch in batches:
        _check_batch(batch)  # e.g. train_step(model, (x, y), ...) instead of [(x, y)]
    _check_optimizer(model, optimizer)
    check_number(max_grad_norm, "max_grad_norm", low=0, low_open=True, optional=True, hint="(None: no clipping)")
    params, device, total = [p for p in model.parameters() if p.requires_grad], _device(model), 0.0
    optimizer.zero_grad(set_to_none=True)
    for batch in batches:
        loss, *_ = _forward(model, _to(batch, device), loss_fn)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {float(loss.detach())}; lower the learning rate or set "
                                     "max_grad_norm.")
        (loss / len(batches)).backward()
        total += float(loss.detach())
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return total / len(batches)


def fit(model: nn.Module, train_loader: Iterable, *, epochs: int = 1, lr: float | None = None,
        optimizer: torch.optim.Optimizer | None = None, weight_decay: float = 0.0,
        loss_fn: Callable | None = None, val_loader: Iterable | None = None,
        eval_every: int | None = None, max_steps: int | None = None, grad_accum_steps: int = 1,
        max_grad_norm: float | None = None, scheduler: Any = None, progress: bool = True,
        name: str = "") -> History:
    """Train the parameters of ``model`` that have ``requires_grad`` and return a ``History``.

    Args:
        epochs: passes over ``train_loader`` (see the module docstring for the batch protocol).
        lr: learning rate of the default AdamW (1e-3 if not given). weight_decay: AdamW's decoupled decay.
        optimizer: your own instead (then leave ``lr`` and ``weight_decay`` unset). It must hold every
            trainable parameter, so build it *after* ``inject_lora`` / ``set_adapter``; one built before
            is refused (it would train nothing new). Frozen parameters besides are harmless.
        val_loader: evaluated every ``eval_every`` steps, or at the end of each epoch if None,
            and always after the last step.
        max_steps: stop after this many optimiser steps. grad_accum_steps: batches per step (an epoch's
            leftover batches make one last, smaller step). max_grad_norm: clip the total gradient norm of
            the trainable parameters to this. scheduler: a ``torch.optim.lr_scheduler`` object, stepped
            after every optimiser step. Each step is one ``train_step``.
        progress: show a tqdm bar. name: label used by ``plots.loss_curves``.

    Every argument is checked before anything changes: a refused call leaves the model as it was.
    """
    for arg, value, optional in (("epochs", epochs, False), ("eval_every", eval_every, True),
                                 ("max_steps", max_steps, True), ("grad_accum_steps", grad_accum_steps, False)):
        check_int(value, arg, optional=optional)
    check_number(max_grad_norm, "max_grad_norm", low=0, low_open=True, optional=True, hint="(None: no clipping)")
    check_number(lr, "lr", low=0, low_open=True, optional=True)
    check_number(weight_decay, "weight_decay", low=0)
    check_bool(progress, "progress")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all requires_grad=False); "
                         "mark the ones to train, e.g. with mark_only_lora_as_trainable(model).")
    if optimizer is None:
        optimizer = torch.optim.AdamW(params, lr=1e-3 if lr is None else lr, weight_decay=weight_decay)
    elif lr is not None or weight_decay:
        raise ValueError("pass either optimizer or lr/weight_decay, not both: "
                         "set the learning rate when you build your optimizer.")
    else:
        _check_optimizer(model, optimizer)
    try:
        per_epoch = math.ceil(len(train_loader) / grad_accum_steps)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    if per_epoch == 0:
        raise ValueError("train_loader is empty.")
    total = per_epoch * epochs if per_epoch is not None else None
    if max_steps is not None:
        total = min(total, max_steps) if total is not None else max_steps

    hist = History(name=name, n_trainable=sum(p.numel() for p in params))
    was_training = model.training

    def validate() -> None:
        if val_loader is not None and (not hist.val_step or hist.val_step[-1] != hist.steps):
            r = evaluate(model, val_loader, loss_fn)
            hist.val_step.append(hist.steps)
            hist.val_loss.append(r["loss"])
            hist.val_accuracy.append(r["accuracy"])
            model.train()

    model.train()
    bar = tqdm(total=total, desc=name or "training", disable=not progress, mininterval=0.5)
    try:
        for _ in range(epochs):
            batches = iter(train_loader)
            while max_steps is None or hist.steps < max_steps:
                t0 = time.perf_counter()
                micro = list(itertools.islice(batches, grad_accum_steps))
                if not micro:  # the epoch is over
                    break
                try:
                    loss = train_step(model, micro, optimizer, loss_fn=loss_fn, max_grad_norm=max_grad_norm,
                                      scheduler=scheduler)
                except FloatingPointError as err:
                    raise FloatingPointError(f"at step {hist.steps + 1}: {err}") from None
                hist.train_loss.append(loss)
                hist.lr.append(optimizer.param_groups[0]["lr"])
                hist.step_time.append(time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)  # redrawn every 0.5 s
                if eval_every is not None and hist.steps % eval_every == 0:
                    validate()
            hist.epoch_end_step.append(hist.steps)
            if eval_every is None:
                validate()
            if max_steps is not None and hist.steps >= max_steps:
                break
        validate()
    finally:
        bar.close()
        model.train(was_training)
    return hist
