"""minilora: the small LoRA library that the course's chapters build, in PEFT's vocabulary."""
from .env import seed_everything
from .layers import LoRAEmbedding, LoRALinear

__version__ = "0.1.0"
