r"""``LoRAConfig``: which layers get an adapter, and with what rank and scaling.  (Chapter 04)

The fields are PEFT's ``LoraConfig`` fields, with the same names, meanings and defaults, so that
``peft.LoraConfig(**config.to_dict())`` describes the same adapter. The update a layer learns is
(Hu et al. 2021, section 4.1)

.. math::   \Delta W = s\,BA, \qquad s = \frac{\alpha}{r}
            \ \text{(or } \frac{\alpha}{\sqrt r} \text{ with rsLoRA, Kalajdzievski 2023)},

with :math:`A \in \mathbb{R}^{r \times d_{in}}` and :math:`B \in \mathbb{R}^{d_{out} \times r}`.
``LoRAConfig``'s docstring explains every field (``LoRAConfig?`` in Jupyter shows it). A config is
checked when it is built: a value of the wrong type raises ``TypeError`` (``r="8"``, ``use_rslora=1``),
a value out of range ``ValueError`` (``r=0``, ``lora_dropout=1.0``); each message says what to pass.

This module imports nothing from minilora but the leaf ``minilora.utils`` (its argument checks),
and ``layers`` builds on it, as in PEFT.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from .utils import check_bool, check_int, check_number

__all__ = ["LoRAConfig", "DEFAULT_TARGETS", "lora_scaling"]

#: The values ``bias`` may take.
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
    """Refuse an invalid LoRA hyper-parameter: ``TypeError`` for a wrong type, ``ValueError`` for a
    value out of range; the message says what to pass instead. (``LoRAConfig`` and every LoRA layer.)"""
    check_int(r, "r", hint="r is the rank of the update ΔW = BA, e.g. r=8.")
    check_number(lora_alpha, "lora_alpha", low=0, low_open=True,
                 hint="The update is scaled by lora_alpha / r; e.g. lora_alpha=16.")
    check_number(lora_dropout, "lora_dropout", low=0, high=1, high_open=True,
                 hint="It is the probability of zeroing an input of the LoRA path; 0.0 turns it off.")
    allowed = ("True (kaiming A, zero B), 'gaussian', False (random B, not a no-op), 'pissa' or 'pissa_niter_K' "
               "(K an integer, e.g. 'pissa_niter_4')")
    if not isinstance(init_lora_weights, (bool, str)):
        raise TypeError(f"init_lora_weights must be {allowed}, got {init_lora_weights!r} "
                        f"({type(init_lora_weights).__name__}).")
    if not (isinstance(init_lora_weights, bool) or init_lora_weights in INIT_LORA_WEIGHTS
            or PISSA_NITER.fullmatch(init_lora_weights)):
        raise ValueError(f"init_lora_weights must be {allowed}, got {init_lora_weights!r}.")
    check_bool(use_rslora, "use_rslora")
    check_bool(use_dora, "use_dora")


def lora_scaling(r: int, lora_alpha: float, use_rslora: bool = False) -> float:
    """``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` for rank-stabilised LoRA (rsLoRA)."""
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


def name_matches(name: str, spec: list[str] | str) -> bool:
    """Whether module ``name`` is selected by ``spec``: a list entry equals the name or its last
    dotted parts; a string is a regular expression that must match the whole name."""
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == key or name.endswith("." + key) for key in spec)


def _check_names(field: str, value, example: str) -> list[str]:
    """A list of non-empty module names (a tuple or set is accepted, returned as a list)."""
    if not all(isinstance(v, str) for v in value):
        wrong = next(v for v in value if not isinstance(v, str))
        raise TypeError(f"{field} must list module names as strings, got {wrong!r} ({type(wrong).__name__}) "
                        f"in {value!r}; e.g. {example}.")
    if not all(value):
        raise ValueError(f"{field} holds an empty name: {value!r}; e.g. {example}.")
    return sorted(value) if isinstance(value, set) else list(value)


def _check_module_spec(field: str, value) -> list[str] | str | None:
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
        if not value:
            raise ValueError(f"{field} must be a non-empty list of module names, got {value!r}; e.g. "
                             "['query', 'value'], or None for the architecture's usual targets.")
        return _check_names(field, value, "['query', 'value']")
    raise TypeError(f"{field} must be a list of names, a regex string or 'all-linear'; got {value!r} "
                    f"({type(value).__name__}). E.g. {field}=['query', 'value'].")


@dataclass
class LoRAConfig:
    r"""What to adapt and how, in PEFT's field names and defaults (``peft.LoraConfig``). Checked when built.

    Each layer that ``inject_lora`` adapts keeps its weight :math:`W_0` frozen and learns
    :math:`\Delta W = s\,BA` beside it, with :math:`s` = ``config.scaling``.

    Args:
        r: the rank of the update: the inner size of :math:`B` (out, r) and :math:`A` (r, in), so an
            adapted layer trains :math:`r(d_{in} + d_{out})` numbers. An integer >= 1. Default: ``8``.
            LoRA paper (Hu et al. 2021), section 4.1; section 7.2 (Table 6) finds a rank as small as 1
            competitive when GPT-3's :math:`W_q` and :math:`W_v` are adapted. Chapters 02, 04, 09.
        lora_alpha: :math:`\alpha`, which sets the scaling :math:`s = \alpha / r`. With Adam, tuning
            :math:`\alpha` is roughly tuning the learning rate, so the paper sets it to the first r it tries
            and keeps it when r changes (section 4.1). A number > 0. Default: ``8``. Chapters 02 and 09.
        lora_dropout: the probability of zeroing each input of the LoRA path (the base layer still sees
            the whole input): a regulariser, a number in [0, 1). Default: ``0.0`` (off), as in PEFT.
            The LoRA paper's code (loralib) has this dropout; QLoRA (Dettmers et al. 2023) trains with a
            small one, between 0.05 and 0.1. Chapter 02.
        target_modules: which layers get an adapter, in one of three forms: a list of names, each
            matching a module's full name or its last dotted parts (``"query"`` matches
            ``encoder.layer.0.attention.self.query``); a string, a regular expression that must match the
            *whole* name (``r".*\.(q|v)_proj"``); or ``"all-linear"``: every Linear and Conv1D except the
            output head. ``None`` picks the usual choice for the model's architecture, attention query and
            value (``DEFAULT_TARGETS``). Default: ``None``. LoRA paper section 4.2 (attention weights
            only) and section 7.1 (Table 5: which matrices to adapt at an equal parameter budget). Chapters 04, 09.
        exclude_modules: modules never adapted, in the same forms as ``target_modules`` (except
            ``"all-linear"``), applied after it. Default: ``None``. A PEFT field, with no paper behind it.
            Chapter 04.
        bias: which biases train with the adapter: ``"none"``, ``"all"`` (every bias in the model) or
            ``"lora_only"`` (the biases of adapted layers). A trained bias is part of the adapter file.
            The LoRA paper keeps biases frozen (section 4.2); its code (loralib's
            ``mark_only_lora_as_trainable``) offers the same three choices. Default: ``'none'``. Chapter 04.
        modules_to_save: modules trained in full and saved with the adapter, such as a newly initialised
            classifier head (``["classifier"]``); each name matches as in ``target_modules``' list form,
            and a single string counts as a one-name list. PEFT keeps a trained copy beside the original
            (``ModulesToSaveWrapper``). Default: ``None``. Chapters 04 and 05.
        use_rslora: rank-stabilised LoRA: :math:`s = \alpha / \sqrt r` instead of :math:`\alpha / r`, so
            that the size of the updates does not shrink as the rank grows (Kalajdzievski 2023, "A Rank
            Stabilization Scaling Factor for Fine-Tuning with LoRA", section 3). Default: ``False``. Chapter 09.
        init_lora_weights: how A and B start. ``True``: A kaiming-uniform (a = sqrt 5, as the reference
            code; the paper's section 4.1 says a random Gaussian) and B = 0, so :math:`\Delta W = 0` and the
            model starts exactly as the base model. ``"gaussian"``: A ~ N(0, 1/r^2), B = 0. ``False``: B
            random too, not a no-op (for tests). ``"pissa"`` or ``"pissa_niter_K"``: A and B from the top-r
            singular vectors of :math:`W_0`, which becomes :math:`W_0 - sBA` (PiSSA, Meng et al. 2024,
            section 3; ``K`` subspace iterations of a randomised SVD; ``minilora.pissa``).
            Default: ``True``. Chapters 02 and 09.
        use_dora: DoRA (Liu et al. 2024, section 4): a trainable magnitude per output feature rescales
            each row of :math:`W_0 + sBA`, whose direction LoRA learns (``minilora.dora``).
            Default: ``False``. Chapter 09.

    Raises:
        TypeError: a field of the wrong type (``r="8"``, ``r=True``, ``use_rslora=1``, ``target_modules=5``).
        ValueError: a field out of range (``r=0``, ``lora_dropout=1.0``, ``bias="some"``).
    """

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
        if not isinstance(self.bias, str):
            raise TypeError(f"bias must be one of {BIASES}, got {self.bias!r} ({type(self.bias).__name__}).")
        if self.bias not in BIASES:
            raise ValueError(f"bias must be one of {BIASES}, got {self.bias!r}.")
        targets = _check_module_spec("target_modules", self.target_modules)
        excluded = _check_module_spec("exclude_modules", self.exclude_modules)
        if excluded == "all-linear":
            raise ValueError("exclude_modules='all-linear' would exclude every target; list names instead.")
        saved = self.modules_to_save
        if saved is not None:
            if isinstance(saved, str):
                saved = [saved]
            elif not isinstance(saved, (list, tuple, set)):
                raise TypeError(f"modules_to_save must be a list of module names, got {saved!r} "
                                f"({type(saved).__name__}); e.g. modules_to_save=['classifier'].")
            saved = _check_names("modules_to_save", saved, "['classifier']")
        self.target_modules, self.exclude_modules, self.modules_to_save = targets, excluded, saved

    @property
    def scaling(self) -> float:
        """``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA (LoRA paper section 4.1; Kalajdzievski 2023)."""
        return lora_scaling(self.r, self.lora_alpha, self.use_rslora)

    def to_dict(self) -> dict:
        """The fields as a dict: ``peft.LoraConfig(**config.to_dict())`` builds the same adapter."""
        return asdict(self)
