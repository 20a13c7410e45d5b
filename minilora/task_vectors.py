r"""Task vectors: what fine-tuning added, as something to scale, add, subtract and merge.  (Chapter 11)

A *task vector* (Ilharco et al. 2023, "Editing Models with Task Arithmetic") is
:math:`\tau = \theta_{ft} - \theta_{pre}`, the weights after fine-tuning minus the weights before.
:math:`\theta_{pre} + \lambda\tau` gives the task back at :math:`\lambda = 1`, weakens or strengthens
it at other :math:`\lambda`, removes it for :math:`\lambda < 0` (*negation*), and
:math:`\theta_{pre} + \lambda\sum_t \tau_t` is one model for several tasks (*addition*).

A LoRA adapter **is** a low-rank task vector: on each layer it adds :math:`\Delta W = sBA`
(chapter 02) and changes nothing else; here every task keeps its own classification head.

* ``task_vector(model, adapter_name)``: ``{layer name: ΔW}``, each ΔW in the layer's weight layout.
* ``merge_task_vectors(vectors, weights, combination_type, density, ...)``: one vector, each layer
  merged by ``minilora.merging`` (PEFT's ``merge_utils`` functions) on the **whole** ΔW, as the TIES
  and DARE papers merge fine-tuned models. The result is a dense matrix per layer, exact and as
  large as the layer. ``add_weighted_adapter``'s types must instead stay a LoRA adapter: they merge
  the A's and the B's separately (``"ties"``) or truncate the merged ΔW by SVD (``"ties_svd"``).
* ``added(model, vector)``: a context manager that adds a vector to a plain model's weights and
  puts the original weights back, bit for bit, afterwards.

Scoring a body with a vector added, task by task, is the course's experiment protocol:
``minilora.course.experiments.task_accuracies``.
"""
from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from .errors import UnknownAdapterError
from .inject import lora_layers
from .layers import LoRALayer
from .merging import check_density, dare_linear, dare_ties, magnitude_prune, task_arithmetic, ties
from .utils import check_int, check_number

__all__ = ["COMBINATION_TYPES", "task_vector", "merge_task_vectors", "added"]

#: How ``merge_task_vectors`` can combine vectors: the functions of ``minilora.merging``.
COMBINATION_TYPES = ("task_arithmetic", "magnitude_prune", "ties", "dare_linear", "dare_ties")
TaskVector = dict[str, torch.Tensor]


def task_vector(model: nn.Module, adapter_name: str = "default") -> TaskVector:
    """``{layer name: ΔW = s B A}`` for every LoRA layer of ``model`` that holds ``adapter_name``."""
    if not isinstance(adapter_name, str):
        raise TypeError(f"adapter_name must be a string, got {adapter_name!r} ({type(adapter_name).__name__}).")
    layers = list(lora_layers(model))
    if not any(adapter_name in layer.adapters for _, layer in layers):
        raise UnknownAdapterError(adapter_name, sorted({a for _, layer in layers for a in layer.adapters}),
                                  "the model's LoRA layers")
    return {name: layer.get_delta_weight(adapter_name).detach().clone() for name, layer in layers
            if adapter_name in layer.adapters}


def merge_task_vectors(vectors: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float],
                       combination_type: str = "task_arithmetic", density: float | None = None,
                       majority_sign_method: str = "total", seed: int | None = None) -> TaskVector:
    r"""One task vector from several, layer by layer.

    Args:
        vectors: task vectors (``task_vector``); a layer that a vector lacks counts as zero there.
        weights: one weight per vector (:math:`\lambda_t`; negative subtracts a task).
        combination_type: one of ``COMBINATION_TYPES``. ``"task_arithmetic"`` is exact:
            :math:`\sum_t \lambda_t \tau_t`. The others trim (TIES, magnitude pruning) or drop at
            random (DARE) each :math:`\tau_t` to ``density`` first; see ``minilora.merging``.
        density: the fraction of each ΔW's entries kept, in (0, 1]; required by all but task arithmetic.
        majority_sign_method: TIES' sign election, ``"total"`` or ``"frequency"``.
        seed: DARE draws its random drops from a generator seeded with this (default 0), the layers in
            sorted order, so the same call gives the same merge; the global random state is left alone.
    """
    if not isinstance(combination_type, str):
        raise TypeError(f"combination_type must be one of {', '.join(map(repr, COMBINATION_TYPES))}, got "
                        f"{combination_type!r} ({type(combination_type).__name__}).")
    if combination_type not in COMBINATION_TYPES:
        raise ValueError(f"unknown combination_type {combination_type!r}; choose one of "
                         f"{', '.join(map(repr, COMBINATION_TYPES))}.")
    if isinstance(vectors, Mapping) or not isinstance(vectors, Sequence) or \
            not all(isinstance(v, Mapping) for v in vectors):
        raise TypeError(f"vectors must be a list of task vectors (dicts from task_vector()), got "
                        f"{type(vectors).__name__}; e.g. merge_task_vectors([va, vb], [1.0, 1.0]).")
    if len(vectors) == 0:
        raise ValueError("vectors must be a non-empty list of task vectors (dicts from task_vector()).")
    if isinstance(weights, (str, Mapping)) or not hasattr(weights, "__len__") or not all(
            not isinstance(w, bool) and (isinstance(w, numbers.Real) or isinstance(w, torch.Tensor) and w.numel() == 1)
            for w in weights):
        raise TypeError(f"weights must be a list of numbers, one per task vector, got {weights!r}.")
    check_int(seed, "seed", minimum=0, optional=True)
    if len(weights) != len(vectors):
        raise ValueError(f"give one weight per task vector: {len(vectors)} vectors, {len(weights)} weights.")
    if combination_type != "task_arithmetic":
        if density is None:
            raise ValueError(f"combination_type={combination_type!r} needs a density in (0, 1]: the fraction of "
                             "each task vector's entries to keep.")
        density = check_density(density)
    elif density is not None:
        raise ValueError("task arithmetic keeps every entry: leave density unset, or choose 'magnitude_prune', "
                         "'ties', 'dare_linear' or 'dare_ties'.")
    names = sorted(set().union(*vectors))
    merged = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if seed is None else seed)
        for name in names:
            shapes = {tuple(v[name].shape) for v in vectors if name in v}
            if len(shapes) > 1:
                raise ValueError(f"the vectors disagree on the shape of {name!r}: {sorted(shapes)}; merge task vectors "
                                 "of the same base model.")
            like = next(v[name] for v in vectors if name in v)
            tensors = [v[name].float() if name in v else torch.zeros_like(like, dtype=torch.float32) for v in vectors]
            w = torch.tensor([float(x) for x in weights])
            if combination_type == "task_arithmetic":
                out = task_arithmetic(tensors, w)
            elif combination_type in ("ties", "dare_ties"):
                out = (ties if combination_type == "ties" else dare_ties)(tensors, w, density, majority_sign_method)
            else:
                out = (magnitude_prune if combination_type == "magnitude_prune" else dare_linear)(tensors, w, density)
            merged[name] = out.to(like.dtype)
    return merged


def _weight(model: nn.Module, name: str, delta: torch.Tensor) -> torch.Tensor:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"the model has no layer {name!r}: add a task vector to the base model it came from.") \
            from None
    if isinstance(module, LoRALayer):
        module = module.base_layer
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != delta.shape:
        raise ValueError(f"{name!r} has no weight of shape {tuple(delta.shape)} to add this task vector to "
                         f"(found {None if weight is None else tuple(weight.shape)}).")
    return weight


@contextlib.contextmanager
def added(model: nn.Module, vector: Mapping[str, torch.Tensor], scale: float = 1.0) -> Iterator[nn.Module]:
    """Within the block, ``model``'s weights are ``W + scale * ΔW`` for every layer of ``vector``;
    after it, the original weights are back exactly (copies are kept, nothing is subtracted)."""
    if not isinstance(vector, Mapping):
        raise TypeError(f"vector must be a task vector, a dict {{layer name: ΔW}} from task_vector(), got "
                        f"{type(vector).__name__}.")
    check_number(scale, "scale", hint="The vector is added as W + scale * ΔW; e.g. scale=1.0.")
    weights = {name: _weight(model, name, delta) for name, delta in vector.items()}  # check all before changing any
    saved = {name: w.detach().clone() for name, w in weights.items()}
    try:
        with torch.no_grad():
            for name, w in weights.items():
                w.add_(vector[name].to(w.dtype), alpha=scale)
        yield model
    finally:
        with torch.no_grad():
            for name, w in weights.items():
                w.copy_(saved[name])

