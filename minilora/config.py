"""``LoRAConfig``: which layers get an adapter, and with what rank and scaling.  (Chapter 04)

The fields carry PEFT's meaning (PEFT calls the class ``LoraConfig`` and ``alpha`` ``lora_alpha``):

* ``r``, ``alpha``: the update is ``(alpha / r) * B A`` (``alpha / sqrt(r)`` with ``use_rslora``).
* ``target_modules``: which layers to adapt, in one of three forms:
  a list of names, each matching a module name exactly or as a dotted suffix
  (``"query"`` matches ``encoder.layer.0.attention.self.query``);
  a string, used as a regular expression that must match the *whole* module name
  (``r".*\\.(q|v)_proj"``); or ``"all-linear"``: every Linear and Conv1D except the output head.
  ``None`` picks the usual choice for the course's architectures (attention query and value).
* ``exclude_modules``: same forms; matching modules are never adapted.
* ``bias``: which biases train too: ``"none"``, ``"all"``, or ``"lora_only"`` (biases of adapted layers).
* ``modules_to_save``: modules trained fully and saved with the adapter, e.g. a new classifier head.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from .layers import INITS, _check_args

BIASES = ("none", "all", "lora_only")

#: The usual targets (attention query and value, as in the LoRA paper) per transformers model_type.
DEFAULT_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
}


@dataclass
class LoRAConfig:
    """What to adapt and how. Validated on construction; see the module docstring."""

    r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    bias: str = "none"
    modules_to_save: list[str] | None = None
    use_rslora: bool = False
    init: str = "kaiming"

    def __post_init__(self) -> None:
        _check_args(self.r, self.alpha, self.dropout, self.init)
        if self.bias not in BIASES:
            raise ValueError(f"bias must be one of {BIASES}, got {self.bias!r}.")
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str):
                if value != "all-linear":
                    try:
                        re.compile(value)
                    except re.error as e:
                        raise ValueError(f"{name}={value!r} is a string, so it is used as a regular "
                                         f"expression, but it does not compile: {e}. Pass a list of "
                                         "names instead, e.g. ['query', 'value'].") from None
            elif isinstance(value, (list, tuple, set)):
                if not value or not all(isinstance(v, str) and v for v in value):
                    raise ValueError(f"{name} must be a non-empty list of module names, got {value!r}.")
                setattr(self, name, list(value))
            else:
                raise ValueError(f"{name} must be a list of names, a regex string or 'all-linear'; "
                                 f"got {type(value).__name__}.")
        if self.exclude_modules == "all-linear":
            raise ValueError("exclude_modules='all-linear' would exclude every target; list names instead.")
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str):
                self.modules_to_save = [self.modules_to_save]
            if not all(isinstance(m, str) and m for m in self.modules_to_save):
                raise ValueError(f"modules_to_save must be a list of module names, got {self.modules_to_save!r}.")
            self.modules_to_save = list(self.modules_to_save)
        if not isinstance(self.use_rslora, bool):
            raise ValueError(f"use_rslora must be True or False, got {self.use_rslora!r}.")

    @property
    def scaling(self) -> float:
        """``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        from .layers import lora_scaling

        return lora_scaling(self.r, self.alpha, self.use_rslora)

    def to_dict(self) -> dict:
        return asdict(self)


__all__ = ["LoRAConfig", "DEFAULT_TARGETS", "BIASES", "INITS"]
