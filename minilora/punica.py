r"""BGMV and SGMV: many LoRA adapters in one batch, as gathered and as segmented products.  (Chapter 13)

A server that holds N adapters for one base model gets a batch whose token :math:`t` wants adapter
:math:`i_t`. Stack the adapters' factors, zero-padded to the largest rank :math:`r_{max}`, with each
adapter's scaling :math:`s_i` folded into B:

.. math::  \mathbf{A} \in \mathbb{R}^{N \times r_{max} \times d_{in}}, \qquad
           \mathbf{B} \in \mathbb{R}^{N \times d_{out} \times r_{max}}, \qquad \mathbf{B}_i = s_i B_i.

Token :math:`t`'s update is then :math:`y_t = \mathbf{B}_{i_t} (\mathbf{A}_{i_t} x_t)`: the padded rank
entries are zero in both factors and add nothing. Two ways to compute it for a whole batch
(Punica, Chen et al. 2023; vLLM's ``vllm/lora/ops/torch_ops`` are the reference these follow):

* **BGMV** ("batched gather matrix-vector"): gather every token's own factors, :math:`\mathbf{A}[i]`
  of shape (T, r, in), and do one batched product, *shrink* :math:`v_t = \mathbf{A}_{i_t} x_t`, then
  *expand* :math:`y_t \mathrel{+}= \mathbf{B}_{i_t} v_t`. One call for any mix of adapters, but the gather
  materialises T copies of the factors: fine at decode (one token per request), heavy at prefill.
* **SGMV** ("segmented gather"): sort the tokens by adapter, so that each adapter's tokens form one
  contiguous segment, and run one ordinary matmul per segment. No per-token copies; one call per
  adapter present.

The functions keep vLLM's argument names and write into ``output_tensor`` in place, as vLLM's do.
vLLM's SGMV also takes ``batches``, ``max_seq_length`` and ``token_nums``, the launch sizes of its GPU
kernel; here they are not needed. ``minilora.serving.mixed_batch(..., kernel="bgmv" | "sgmv")`` uses
them on every LoRA linear layer of a model.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["stack_adapters", "bgmv_shrink", "bgmv_expand", "segments", "sgmv_shrink", "sgmv_expand"]


def stack_adapters(layer, names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors of ``layer``'s adapters ``names`` stacked as ``(A, B)``: A is (N, r_max, in) and B is
    (N, out, r_max), each zero-padded to the largest rank, the scaling folded into B. A name the layer
    does not hold (``"__base__"``, or an adapter that does not target this layer) gets zero factors."""
    factors = [layer.factors(n) if n in layer.r else None for n in names]
    r_max = max([A.shape[0] for A, _ in filter(None, factors)], default=1)
    d_in, d_out = layer.dims
    ref = next(A for A, _ in filter(None, factors)) if any(factors) else torch.zeros(0)
    A_stack = ref.new_zeros(len(names), r_max, d_in)  # (N, r_max, in)
    B_stack = ref.new_zeros(len(names), d_out, r_max)  # (N, out, r_max)
    with torch.no_grad():
        for k, (name, f) in enumerate(zip(names, factors)):
            if f is not None:
                A, B = f
                A_stack[k, : A.shape[0]] = A
                B_stack[k, :, : B.shape[1]] = B * layer.scaling[name]
    return A_stack, B_stack


def bgmv_shrink(inputs: torch.Tensor, lora_a_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, scaling: float = 1.0) -> None:
    """``output_tensor[t] = scaling * A[i_t] @ inputs[t]``: inputs (T, in), A (N, r, in), output (T, r),
    indices (T,)."""
    selected = lora_a_weights[lora_indices_tensor]  # (T, r, in): one copy of A per token
    output_tensor.copy_(scaling * torch.einsum("ti,tri->tr", inputs, selected))


def bgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, add_inputs: bool = True) -> None:
    """``output_tensor[t] (+)= B[i_t] @ inputs[t]``: inputs (T, r), B (N, out, r), output (T, out); with
    ``add_inputs`` the product is added to the output, else it replaces it."""
    selected = lora_b_weights[lora_indices_tensor]  # (T, out, r): one copy of B per token
    outputs = torch.einsum("tr,tor->to", inputs, selected)
    output_tensor.add_(outputs) if add_inputs else output_tensor.copy_(outputs)


def segments(sorted_indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For adapter indices sorted so that equal ones are adjacent, ``(b_seq_start_loc, seq_len_tensor,
    lora_indices_tensor)``: where each run starts, its length, and its adapter (vLLM's ``compute_meta``)."""
    lora_indices_tensor, seq_len_tensor = torch.unique_consecutive(sorted_indices, return_counts=True)
    b_seq_start_loc = torch.cumsum(seq_len_tensor, 0) - seq_len_tensor
    return b_seq_start_loc, seq_len_tensor, lora_indices_tensor


def sgmv_shrink(inputs: torch.Tensor, lora_a_weights: torch.Tensor, output_tensor: torch.Tensor,
                b_seq_start_loc: torch.Tensor, seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                scaling: float = 1.0) -> None:
    """Segment k (tokens ``start_k .. start_k + len_k - 1`` of ``inputs``, sorted by adapter) gets
    ``scaling * inputs[seg] @ A[i_k].T``: one matmul per segment. A negative index means no adapter
    (the segment is left alone, as in vLLM)."""
    for start, length, i in zip(b_seq_start_loc.tolist(), seq_len_tensor.tolist(), lora_indices_tensor.tolist()):
        if i >= 0:
            torch.matmul(inputs[start:start + length], lora_a_weights[i].T, out=output_tensor[start:start + length])
            if scaling != 1.0:
                output_tensor[start:start + length].mul_(scaling)


def sgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                b_seq_start_loc: torch.Tensor, seq_len_tensor: torch.Tensor, lora_indices_tensor: torch.Tensor,
                add_inputs: bool = True) -> None:
    """Segment k gets ``inputs[seg] @ B[i_k].T``, added to (``add_inputs``) or written into the output."""
    for start, length, i in zip(b_seq_start_loc.tolist(), seq_len_tensor.tolist(), lora_indices_tensor.tolist()):
        if i >= 0:
            out = output_tensor[start:start + length]
            product = inputs[start:start + length] @ lora_b_weights[i].T  # (len, r) @ (r, out)
            out.add_(product) if add_inputs else out.copy_(product)
