"""minilora: the small LoRA library that the course's chapters build, in PEFT's vocabulary."""
from .config import LoRAConfig
from .env import seed_everything
from .inject import (disable_lora, inject_lora, lora_layers, mark_only_lora_trainable, merge,
                     merge_and_unload, print_trainable_parameters, trainable_parameters, unmerge)
from .layers import LoRAEmbedding, LoRALinear

__version__ = "0.1.0"
