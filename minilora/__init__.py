"""minilora: the small LoRA library that the course's chapters build, in PEFT's vocabulary."""
import warnings

# huggingface_hub imports tqdm.autonotebook, which warns inside Jupyter that ipywidgets is missing.
# The course deliberately uses plain text progress bars (the same in JupyterLab and under nbval),
# so that warning is noise here and is the only one hidden.
warnings.filterwarnings("ignore", message="IProgress not found")
from .adapters import (active_adapters, add_adapter, add_weighted_adapter, delete_adapter, list_adapters,
                       set_adapter)
from .config import LoRAConfig
from .env import seed_everything
from .inject import (disable_lora, inject_lora, lora_layers, mark_only_lora_trainable, merge,
                     merge_and_unload, print_trainable_parameters, trainable_parameters, unmerge)
from .io import load_adapter, save_adapter
from .layers import LoRAEmbedding, LoRALinear
from .train import History, evaluate, fit

__version__ = "0.1.0"
