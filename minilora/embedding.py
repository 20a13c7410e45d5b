r"""LoRA for embedding tables.  (Chapter 02)

An embedding looks row :math:`x` up in a table :math:`E \in \mathbb{R}^{V \times d}`. LoRA adds a
low-rank update to the table, :math:`E + \frac{\alpha}{r} (BA)^T`, and computes it without ever
building the :math:`V \times d` matrix: look row :math:`x` up in :math:`A^T` (r numbers), then
multiply by :math:`B^T`. As in PEFT, ``lora_embedding_A`` is (r, V) and starts at zero and
``lora_embedding_B`` is (d, r) and starts N(0, 1), so the layer starts as the base table.
Everything else (adapters by name, merging, switching off) is ``minilora.layers.LoRALayer``'s.
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
    features to drop, so dropout is not applied (as in PEFT). Arguments as ``LoRALinear``."""

    adapter_layer_names = ("lora_embedding_A", "lora_embedding_B")

    def __init__(self, base_layer: nn.Embedding, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
                 use_rslora: bool = False, init_lora_weights: bool | str = True, adapter_name: str = "default"):
        self.refuse_lora(base_layer)
        if not isinstance(base_layer, nn.Embedding):
            raise ValueError(f"LoRAEmbedding wraps nn.Embedding, got {type(base_layer).__name__}; "
                             "for linear layers use LoRALinear.")
        super().__init__(base_layer)
        self.num_embeddings, self.embedding_dim = base_layer.num_embeddings, base_layer.embedding_dim
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()
        self.update_layer(adapter_name, r, lora_alpha, lora_dropout, init_lora_weights, use_rslora)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, lora_dropout: float = 0.0,
                     init_lora_weights: bool | str = True, use_rslora: bool = False) -> None:
        """Add adapter ``adapter_name`` (A = 0: a no-op at first); activate it with ``set_adapter``."""
        self._check_new(adapter_name, r, lora_alpha, lora_dropout, init_lora_weights, use_rslora,
                        (self.num_embeddings, self.embedding_dim))
        if isinstance(init_lora_weights, str) and init_lora_weights.startswith("pissa"):
            raise ValueError("init_lora_weights='pissa' starts from the SVD of a linear weight, not of an embedding "
                             "table (PEFT refuses it too); use init_lora_weights=True here.")
        if lora_dropout > 0:
            warnings.warn("lora_dropout is not applied to an embedding (as in PEFT); it has no effect here.",
                          stacklevel=2)
        if init_lora_weights == "gaussian":
            warnings.warn("init_lora_weights='gaussian' acts as True on an embedding, as in PEFT: A = 0 and "
                          "B ~ N(0, 1).", stacklevel=2)
        kw = self._factory()
        self.lora_dropout[adapter_name] = nn.Identity()
        A = torch.randn(r, self.num_embeddings, **kw)  # (r, num_embeddings)
        B = torch.randn(self.embedding_dim, r, **kw)  # (dim, r)
        if init_lora_weights is not False:
            nn.init.zeros_(A)
            nn.init.normal_(B)
        self.lora_embedding_A[adapter_name] = nn.Parameter(A)
        self.lora_embedding_B[adapter_name] = nn.Parameter(B)
        self._register(adapter_name, r, lora_alpha, use_rslora)

    def get_delta_weight(self, adapter: str | None = None) -> torch.Tensor:
        """``scaling * (B @ A)^T``, shaped like the embedding table (num_embeddings, dim)."""
        adapter = self._resolve(adapter)
        return (self.lora_embedding_B[adapter] @ self.lora_embedding_A[adapter]).T * self.scaling[adapter]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        e = self.base_layer
        for n in self._live_adapters():
            A, B = self.lora_embedding_A[n], self.lora_embedding_B[n]
            after_A = F.embedding(x, A.T, e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq, e.sparse)
            result = result + (after_A @ B.T * self.scaling[n]).to(result.dtype)  # (..., r) -> (..., dim)
        return result

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}, {super().extra_repr()}"
