r"""LoRA for embedding tables.  (Chapter 02)

An embedding looks row :math:`x` up in a table :math:`E \in \mathbb{R}^{V \times d}`. LoRA adds a
low-rank update to the table, :math:`E + \frac{\alpha}{r} (BA)^T`, and computes it without ever
building the :math:`V \times d` matrix: look row :math:`x` up in :math:`A^T` (r numbers), then
multiply by :math:`B^T`. As in PEFT, ``lora_embedding_A`` is (r, V) and starts at zero and
``lora_embedding_B`` is (d, r) and starts N(0, 1), so the layer starts as the base table.
Everything else (adapters by name, variants, merging, switching off) is ``minilora.layers.LoRALayer``'s;
this class supplies the plain-LoRA maths of a table (``plain_output``, ``plain_delta_weight``,
``reset_lora_parameters``), which the default ``LoraVariant`` uses.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LoRALayer

__all__ = ["LoRAEmbedding"]


class LoRAEmbedding(LoRALayer):
    """LoRA for ``nn.Embedding``: ``E[x] + scaling * (A^T[x]) B^T``.

    PEFT's layout: ``lora_embedding_A`` (r, num_embeddings) starts at zero and ``lora_embedding_B``
    (embedding_dim, r) starts N(0, 1), so the layer starts as the identity. A look-up has no input
    features to drop, so dropout is not applied (as in PEFT). Arguments as ``LoRALinear``; DoRA and PiSSA
    are for linear layers only, so ``use_dora=True`` and ``init_lora_weights="pissa"`` are refused."""

    adapter_layer_names = ("lora_embedding_A", "lora_embedding_B")
    _container = nn.ParameterDict

    def __init__(self, base_layer: nn.Embedding, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
                 use_rslora: bool = False, init_lora_weights: bool | str = True, adapter_name: str = "default",
                 use_dora: bool = False):
        self.refuse_lora(base_layer)
        if not isinstance(base_layer, nn.Embedding):
            raise TypeError(f"LoRAEmbedding wraps nn.Embedding, got {type(base_layer).__name__}; "
                             "for linear layers use LoRALinear.")
        super().__init__(base_layer)
        self.num_embeddings, self.embedding_dim = base_layer.num_embeddings, base_layer.embedding_dim
        self.update_layer(adapter_name, r, lora_alpha, lora_dropout, init_lora_weights, use_rslora, use_dora)

    @property
    def dims(self) -> tuple[int, int]:
        return self.num_embeddings, self.embedding_dim

    def _check_new(self, name: str, **args):
        variant = super()._check_new(name, **args)  # DoraVariant and PissaVariant refuse an embedding
        if args["lora_dropout"] > 0:
            warnings.warn("lora_dropout is not applied to an embedding (as in PEFT); it has no effect here.",
                          stacklevel=3)
        if args["init_lora_weights"] == "gaussian":
            warnings.warn("init_lora_weights='gaussian' acts as True on an embedding, as in PEFT: A = 0 and "
                          "B ~ N(0, 1).", stacklevel=3)
        return variant

    def _create_adapter(self, name: str, r: int, lora_dropout: float) -> None:
        kw = self._factory()
        self.lora_dropout[name] = nn.Identity()
        self.lora_embedding_A[name] = nn.Parameter(torch.randn(r, self.num_embeddings, **kw))  # (r, num_embeddings)
        self.lora_embedding_B[name] = nn.Parameter(torch.randn(self.embedding_dim, r, **kw))  # (dim, r)

    def reset_lora_parameters(self, adapter_name: str, init_lora_weights: bool | str) -> None:
        """True or "gaussian": A = 0, B ~ N(0, 1) (PEFT's); False: both keep their random draw."""
        if init_lora_weights is not False:
            with torch.no_grad():
                nn.init.zeros_(self.lora_embedding_A[adapter_name])
                nn.init.normal_(self.lora_embedding_B[adapter_name])

    def plain_output(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        A, B, e = self.lora_embedding_A[adapter_name], self.lora_embedding_B[adapter_name], self.base_layer
        after_A = F.embedding(x, A.T, e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq, e.sparse)
        return after_A @ B.T * self.scaling[adapter_name]  # (..., r) -> (..., dim)

    def plain_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``scaling * (B @ A)^T``, shaped like the embedding table (num_embeddings, dim)."""
        B, A = self.lora_embedding_B[adapter_name], self.lora_embedding_A[adapter_name]
        return (B @ A).T * self.scaling[adapter_name]

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, {super().extra_repr()}"
