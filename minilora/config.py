r"""``LoRAConfig``: which layers get an adapter, and with what rank and scaling.  (Chapter 04)

The fields are PEFT's ``LoraConfig`` fields, with the same names, meanings and defaults, so that
``peft.LoraConfig(**config.to_dict())`` describes the same adapter:

* ``r``, ``lora_alpha``: the update is :math:`\Delta W = \frac{\alpha}{r} B A` (with ``use_rslora``,
  :math:`\frac{\alpha}{\sqrt r} B A`, rank-stabilised LoRA, Kalajdzievski 2023).
* ``lora_dropout``: dropout on the input of the LoRA path only.
* ``target_modules``: which layers to adapt, in one of three forms: a list of names, each matching a
  module's full name or its last dotted parts (``"query"`` matches ``encoder.layer.0.attention.self.query``);
  a string, a regular expression that must match the *whole* name (``r".*\.(q|v)_proj"``); or
  ``"all-linear"``: every Linear and Conv1D except the output head. ``None`` picks the usual choice
  for the model's architecture (attention query and value, ``DEFAULT_TARGETS``).
* ``exclude_modules``: the same forms; matching modules are never adapted.
* ``bias``: which biases train too: ``"none"``, ``"all"``, or ``"lora_only"`` (those of adapted layers).
* ``modules_to_save``: modules trained fully and saved with the adapter, e.g. a new classifier head.
* ``init_lora_weights``: ``True`` (A kaiming-uniform with a = sqrt 5, B = 0: the layer starts as the
  base layer), ``"gaussian"`` (A ~ N(0, 1/r^2), B = 0), ``False`` (B random too: not a no-op,
  for tests), or ``"pissa"`` / ``"pissa_niter_K"`` (A and B from the top-r SVD of W, which becomes
  W - scaling B A: PiSSA, chapter 09, ``minilora.pissa``).
* ``use_dora``: a magnitude vector per output feature rescales each row of :math:`W_0 + sBA`
  (DoRA, chapter 09, ``minilora.dora``).

This module is a leaf: it imports nothing from minilora, and ``layers`` builds on it, as in PEFT.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

__all__ = ["LoRAConfig", "DEFAULT_TARGETS", "BIASES", "INIT_LORA_WEIGHTS", "PISSA_NITER", "check_lora_args",
           "lora_scaling", "name_matches", "check_module_spec"]

BIASES = ("none", "all", "lora_only")
#: The values ``init_lora_weights`` may take, besides ``"pissa_niter_K"`` (K >= 0 an integer, the
#: subspace iterations of ``torch.svd_lowrank``). PEFT accepts more ("olora", "loftq", ...).
INIT_LORA_WEIGHTS = (True, False, "gaussian", "pissa")
PISSA_NITER = re.compile(r"pissa_niter_(\d+)")

#: The usual targets (attention query and value, as in the LoRA paper) per transformers model_type.
DEFAULT_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
}


def check_lora_args(r: int, lora_alpha: float, lora_dropout: float, init_lora_weights: bool | str,
                    use_rslora: bool = False, use_dora: bool = False) -> None:
    """Raise a ``ValueError`` that says what to pass instead, for any invalid LoRA hyper-parameter."""
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"r must be a positive integer (the rank of the update), got {r!r}.")
    if not isinstance(lora_alpha, (int, float)) or isinstance(lora_alpha, bool) or not lora_alpha > 0:
        raise ValueError(f"lora_alpha must be a positive number (scaling = lora_alpha / r), got {lora_alpha!r}.")
    if not isinstance(lora_dropout, (int, float)) or isinstance(lora_dropout, bool) or not 0.0 <= lora_dropout < 1.0:
        raise ValueError(f"lora_dropout must be a probability in [0, 1), got {lora_dropout!r}.")
    if not (any(init_lora_weights is v or (isinstance(v, str) and init_lora_weights == v) for v in INIT_LORA_WEIGHTS)
            or isinstance(init_lora_weights, str) and PISSA_NITER.fullmatch(init_lora_weights)):
        raise ValueError(f"init_lora_weights must be True (kaiming A, zero B), 'gaussian', False (random B, not a "
                         f"no-op), 'pissa' or 'pissa_niter_K' (K an integer, e.g. 'pissa_niter_4'), "
                         f"got {init_lora_weights!r}.")
    if not isinstance(use_rslora, bool):
        raise ValueError(f"use_rslora must be True or False, got {use_rslora!r}.")
    if not isinstance(use_dora, bool):
        raise ValueError(f"use_dora must be True or False, got {use_dora!r}.")


def lora_scaling(r: int, lora_alpha: float, use_rslora: bool = False) -> float:
    """``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` for rank-stabilised LoRA (rsLoRA)."""
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def name_matches(name: str, spec: list[str] | str) -> bool:
    """Whether module ``name`` is selected by ``spec``: a list entry equals the name or its last
    dotted parts; a string is a regular expression that must match the whole name."""
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == key or name.endswith("." + key) for key in spec)


def check_module_spec(field: str, value: list[str] | tuple[str, ...] | str | None) -> list[str] | str | None:
    """Validate a list-of-names / regex / "all-linear" field; return it with lists as ``list``."""
    if value is None:
        return None
    if isinstance(value, str):
        if value != "all-linear":
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"{field}={value!r} is a string, so it is used as a regular expression, but it "
                                 f"does not compile: {e}. Pass a list of names instead, e.g. ['query', 'value']."
                                 ) from None
        return value
    if isinstance(value, (list, tuple, set)):
        if not value or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"{field} must be a non-empty list of module names, got {value!r}.")
        return sorted(value) if isinstance(value, set) else list(value)
    raise ValueError(f"{field} must be a list of names, a regex string or 'all-linear'; got {type(value).__name__}.")


@dataclass
class LoRAConfig:
    """What to adapt and how, in PEFT's field names and defaults. Validated on construction."""

    r: int = 8
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    bias: str = "none"
    modules_to_save: list[str] | None = None
    use_rslora: bool = False
    init_lora_weights: bool | str = True
    use_dora: bool = False

    def __post_init__(self) -> None:
        check_lora_args(self.r, self.lora_alpha, self.lora_dropout, self.init_lora_weights, self.use_rslora,
                        self.use_dora)
        if self.bias not in BIASES:
            raise ValueError(f"bias must be one of {BIASES}, got {self.bias!r}.")
        self.target_modules = check_module_spec("target_modules", self.target_modules)
        self.exclude_modules = check_module_spec("exclude_modules", self.exclude_modules)
        if self.exclude_modules == "all-linear":
            raise ValueError("exclude_modules='all-linear' would exclude every target; list names instead.")
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str):
                self.modules_to_save = [self.modules_to_save]
            if not all(isinstance(m, str) and m for m in self.modules_to_save):
                raise ValueError(f"modules_to_save must be a list of module names, got {self.modules_to_save!r}.")
            self.modules_to_save = list(self.modules_to_save)

    @property
    def scaling(self) -> float:
        """``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA."""
        return lora_scaling(self.r, self.lora_alpha, self.use_rslora)

    def to_dict(self) -> dict:
        """The fields as a dict: ``peft.LoraConfig(**config.to_dict())`` builds the same adapter."""
        return asdict(self)
