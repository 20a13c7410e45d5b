r"""NF4 from scratch: the 4-bit NormalFloat weights of QLoRA.  (Chapter 08)

**The code book.** Pretrained weights are roughly normal, so NF4 puts its 16 values at quantiles
of :math:`N(0, 1)` instead of spacing them evenly (QLoRA, Dettmers et al. 2023; bitsandbytes'
``create_normal_map(offset=0.9677083, use_extra_value=True)``): with :math:`\Phi^{-1}` the normal
quantile function and :math:`\delta = 0.9677083`,

.. math::   q^+_i = \Phi^{-1}(p_i),\ p = \mathrm{linspace}(\delta, \tfrac12, 9)_{0..7}, \qquad
            q^-_j = -\Phi^{-1}(p_j),\ p = \mathrm{linspace}(\delta, \tfrac12, 8)_{0..6},

plus an exact 0; the 16 values are sorted and divided by the largest, so they span [-1, 1]
(8 positive, 7 negative: asymmetric, so that 0 is represented exactly).

**Block-wise absmax.** The flattened weight is cut into blocks of ``blocksize`` (64) numbers. Each
block keeps one fp32 constant :math:`c = \max|w|`, and each weight the index of the code-book value
nearest to :math:`w / c`. Dequantizing is a look-up and a multiply: :math:`\hat w = c\,q_{code}`.
The error of one weight is at most :math:`c/2` times the largest gap of the code book.
A last, partial block is padded with zeros (which change neither its absmax nor any real code);
the padding is not stored.

**Packing.** Two 4-bit codes share one byte: element ``2k`` in the *high* nibble, element
``2k+1`` in the *low* nibble (bitsandbytes' order). An odd count leaves the last low nibble 0.

**Size.** Per weight: 4 bits of code + 32/64 = 0.5 bits of fp32 constants = 4.5 bits.
*Double quantization* (QLoRA) quantizes the constants too: subtract their mean, cut them into
blocks of 256, and store each as int8 with one fp32 absmax per block (we round symmetrically to
[-127, 127]; bitsandbytes uses a non-linear 8-bit code of the same size). That costs
8/64 + 32/(64*256) = 0.127 bits, so 4.127 bits per weight, plus one fp32 mean per tensor.

``LinearNF4`` is a frozen linear layer stored this way: it dequantizes in ``forward`` (and again in
backward, so the full weight is never kept for the backward pass) and ``LoRALinear`` wraps it:
that is QLoRA. ``quantize_model_nf4`` swaps the linear layers of a whole model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

NF4_OFFSET = 0.9677083


def nf4_codebook(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 values (float32, sorted, in [-1, 1], with an exact 0), as bitsandbytes builds them."""
    if not 0.5 < offset < 1.0:
        raise ValueError(f"offset must lie in (0.5, 1) (a probability above the median), got {offset!r}.")
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double()).float()
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double()).float()
    v = torch.cat([pos, torch.zeros(1), neg]).sort().values
    return v / v.max()


NF4 = nf4_codebook()
"""The NF4 code book: code ``i`` (0..15) stands for ``NF4[i]``; code 7 is exactly 0."""
_BYTE_VALUES = torch.stack([NF4.repeat_interleave(16), NF4.repeat(16)], dim=1)
"""Row ``b`` holds the two values that byte ``b`` stands for (high nibble first): one lookup per byte."""


def _check_blocksize(blocksize: int, what: str = "blocksize") -> None:
    if not isinstance(blocksize, int) or isinstance(blocksize, bool) or blocksize < 2 or blocksize % 2:
        raise ValueError(f"{what} must be a positive even integer (e.g. 64), got {blocksize!r}.")


def _pack(codes: torch.Tensor) -> torch.Tensor:
    c = codes.reshape(-1).to(torch.int32)  # int32 arithmetic is much faster than uint8 shifts on CPU
    c = torch.cat([c, c.new_zeros(1)]) if c.numel() % 2 else c
    pairs = c.view(-1, 2)
    return (pairs[:, 0] * 16 + pairs[:, 1]).to(torch.uint8)


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes (integers 0..15) two per byte: element 2k high nibble, 2k+1 low nibble."""
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"codes must be an integer tensor of values 0..15, got dtype {codes.dtype}.")
    if codes.numel() and (codes.min() < 0 or codes.max() > 15):
        raise ValueError("codes must lie in 0..15 (4 bits each).")
    return _pack(codes)


def unpack_4bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` codes (uint8, 0..15) that ``pack_4bit`` stored in ``packed``."""
    if packed.dtype != torch.uint8 or not 0 <= n <= 2 * packed.numel():
        raise ValueError(f"need a uint8 tensor of at least ceil(n/2) bytes; got {packed.dtype}, "
                         f"{packed.numel()} bytes for n={n}.")
    p = packed.reshape(-1).to(torch.int32)
    return torch.stack([p >> 4, p & 0x0F], dim=-1).reshape(-1)[:n].to(torch.uint8)


def nf4_nbytes(numel: int, blocksize: int = 64, double_quant: bool = False, dq_blocksize: int = 256) -> int:
    """Exact bytes of ``quantize_nf4`` output for ``numel`` weights (codes + block constants)."""
    blocks = math.ceil(numel / blocksize)
    consts = blocks + 4 * math.ceil(blocks / dq_blocksize) + 4 if double_quant else 4 * blocks
    return (numel + 1) // 2 + consts


@dataclass
class NF4Tensor:
    """A tensor stored in NF4. ``codes``: uint8, two codes per byte (``pack_4bit``). ``absmax``:
    one fp32 constant per block, or int8 when double-quantized, with then ``absmax_scale`` (fp32,
    one per ``dq_blocksize`` blocks) and ``absmax_mean`` (fp32 scalar). ``shape``/``dtype``: of the
    original tensor, which ``dequantize()`` gives back."""

    codes: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype
    blocksize: int = 64
    absmax_scale: Optional[torch.Tensor] = None
    absmax_mean: Optional[torch.Tensor] = None
    dq_blocksize: int = 256

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor really stored."""
        return [t for t in (self.codes, self.absmax, self.absmax_scale, self.absmax_mean) if t is not None]

    def nbytes(self) -> int:
        """Bytes of every stored tensor, counted from the tensors themselves."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def bits_per_param(self) -> float:
        return 8 * self.nbytes() / self.numel

    def block_absmax(self) -> torch.Tensor:
        """The fp32 block constants (dequantized first when double-quantized)."""
        if not self.double_quant:
            return self.absmax.float()
        q, bs = self.absmax.float(), self.dq_blocksize
        q = F.pad(q, (0, self.absmax_scale.numel() * bs - q.numel())).view(-1, bs)
        return (q / 127 * self.absmax_scale.float()[:, None]).reshape(-1)[: self.absmax.numel()] + self.absmax_mean

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return dequantize_nf4(self, dtype)


def quantize_nf4(w: torch.Tensor, blocksize: int = 64, double_quant: bool = False,
                 dq_blocksize: int = 256) -> NF4Tensor:
    """Quantize ``w`` block-wise to NF4 (see the module docstring); ``dequantize_nf4`` inverts it."""
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise ValueError(f"quantize_nf4 needs a floating-point tensor, got "
                         f"{w.dtype if isinstance(w, torch.Tensor) else type(w).__name__}.")
    _check_blocksize(blocksize)
    _check_blocksize(dq_blocksize, "dq_blocksize")
    if w.numel() == 0:
        raise ValueError("quantize_nf4 needs a non-empty tensor.")
    flat = w.detach().reshape(-1).float()
    n = flat.numel()
    blocks = (F.pad(flat, (0, -n % blocksize)) if n % blocksize else flat).view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    if not torch.isfinite(absmax).all():
        raise ValueError("quantize_nf4 needs finite numbers; this tensor holds NaN or inf.")
    scaled = blocks / torch.where(absmax > 0, absmax, torch.ones_like(absmax))[:, None]
    code = NF4.to(w.device)
    codes = torch.bucketize(scaled, (code[1:] + code[:-1]) / 2, out_int32=True).reshape(-1)[:n]
    q = NF4Tensor(_pack(codes), absmax, w.shape, w.dtype, blocksize, dq_blocksize=dq_blocksize)
    if double_quant:
        mean = absmax.mean()
        c = F.pad(absmax - mean, (0, -absmax.numel() % dq_blocksize)).view(-1, dq_blocksize)
        scale = c.abs().amax(dim=1)
        ints = torch.round(c / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None] * 127)
        q.absmax = ints.clamp(-127, 127).to(torch.int8).reshape(-1)[: absmax.numel()]
        q.absmax_scale, q.absmax_mean = scale, mean
    return q


def dequantize_nf4(q: NF4Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Rebuild the tensor: ``absmax[block] * NF4[code]``, in ``dtype`` (default: the original's)."""
    if not isinstance(q, NF4Tensor):
        raise ValueError(f"dequantize_nf4 takes an NF4Tensor (from quantize_nf4), got {type(q).__name__}.")
    n, bs = q.numel, q.blocksize
    values = F.embedding(q.codes.reshape(-1).to(torch.int32), _BYTE_VALUES.to(q.codes.device)).reshape(-1)
    absmax = q.block_absmax()
    pad = absmax.numel() * bs - values.numel()  # >= 0: bs is even, so at most the last block is partial
    values = (F.pad(values, (0, pad)) if pad else values).view(-1, bs) * absmax[:, None]
    return values.reshape(-1)[:n].reshape(q.shape).to(dtype or q.dtype)


class _NF4Matmul(torch.autograd.Function):
    """``x @ W^T`` that dequantizes W in forward and again in backward, saving no full weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: "LinearNF4") -> torch.Tensor:
        ctx.layer = layer
        return F.linear(x, layer.dequantize_weight(x.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.layer.dequantize_weight(grad.dtype), None


class LinearNF4(nn.Module):
    """A frozen linear layer whose weight is stored in NF4; the bias stays in fp32.

    ``forward`` computes in ``compute_dtype`` (default: the original weight's dtype) and returns
    the input's dtype. Build one with ``LinearNF4.from_linear(linear)``. ``LoRALinear`` wraps it
    (QLoRA) but refuses to merge into it. Do not cast it with ``.to(dtype)``: that would cast the
    fp32 block constants too; set ``compute_dtype`` instead."""

    is_quantized = True

    def __init__(self, weight: NF4Tensor, bias: Optional[torch.Tensor] = None,
                 compute_dtype: Optional[torch.dtype] = None):
        super().__init__()
        if not isinstance(weight, NF4Tensor) or len(weight.shape) != 2:
            raise ValueError("LinearNF4 needs a 2-D NF4Tensor weight (out_features, in_features).")
        self.out_features, self.in_features = weight.shape
        # The bias is registered first: LoRALinear takes its adapters' dtype from the first parameter.
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        for name in ("codes", "absmax", "absmax_scale", "absmax_mean"):
            self.register_buffer(f"weight_{name}", getattr(weight, name))
        self._meta = (weight.shape, weight.dtype, weight.blocksize, weight.dq_blocksize)
        self.compute_dtype = compute_dtype or weight.dtype

    @classmethod
    def from_linear(cls, linear: nn.Linear, blocksize: int = 64, double_quant: bool = True,
                    compute_dtype: Optional[torch.dtype] = None) -> "LinearNF4":
        """Quantize ``linear.weight`` to NF4 (double-quantized by default, as QLoRA)."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"from_linear takes an nn.Linear, got {type(linear).__name__}.")
        q = quantize_nf4(linear.weight, blocksize, double_quant)
        return cls(q, linear.bias, compute_dtype)

    @property
    def weight_nf4(self) -> NF4Tensor:
        """The stored weight as an NF4Tensor (views of this module's buffers)."""
        shape, dtype, bs, dq_bs = self._meta
        return NF4Tensor(self.weight_codes, self.weight_absmax, shape, dtype, bs,
                         self.weight_absmax_scale, self.weight_absmax_mean, dq_bs)

    def dequantize_weight(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The full weight (out, in), rebuilt from NF4, in ``dtype`` (default ``compute_dtype``)."""
        return dequantize_nf4(self.weight_nf4, dtype or self.compute_dtype)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the dequantized weight (e.g. to merge LoRA into it)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight_codes.device, dtype=self._meta[1])
        with torch.no_grad():
            out.weight.copy_(self.dequantize_weight(self._meta[1]))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise TypeError(f"LinearNF4 needs a floating-point input, got {x.dtype}.")
        out = _NF4Matmul.apply(x.to(self.compute_dtype), self)
        if self.bias is not None:
            out = out + self.bias.to(self.compute_dtype)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        q = self.weight_nf4
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"blocksize={q.blocksize}, double_quant={q.double_quant}, compute_dtype={self.compute_dtype}")


@dataclass
class QuantizeReport:
    """What ``quantize_model_nf4`` did: layers replaced, layers left alone (and why), bytes."""

    replaced: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    bytes_before: int = 0
    bytes_after: int = 0

    def __str__(self) -> str:
        lines = [f"NF4: replaced {len(self.replaced)} linear layers; model {self.bytes_before / 1e6:,.2f} MB "
                 f"-> {self.bytes_after / 1e6:,.2f} MB ({self.bytes_before / max(self.bytes_after, 1):.2f}x smaller)"]
        lines += [f"  left in full precision: {n} ({why})" for n, why in self.skipped.items()]
        return "\n".join(lines)


def quantize_model_nf4(model: nn.Module, skip: Sequence[str] = ("lm_head",), blocksize: int = 64,
                       double_quant: bool = True, compute_dtype: Optional[torch.dtype] = None) -> QuantizeReport:
    """Replace, in place, every ``nn.Linear`` of ``model`` by a frozen ``LinearNF4``.

    Left alone (and listed in the report): layers whose full name, or any dotted part of it, is
    in ``skip`` (the LM head by default); weights tied to another parameter; subclasses of
    nn.Linear and Conv1D; and, in a model that has LoRA layers, linears that are still trainable
    (e.g. ``modules_to_save``). In a LoRA model the ``.base`` of each ``LoRALinear`` is quantized."""
    from .layers import LoRALinear
    from .memory import model_nbytes

    if isinstance(skip, str):
        raise ValueError(f"skip must be a list of names, e.g. [{skip!r}], not a string.")
    _check_blocksize(blocksize)
    if isinstance(model, (nn.Linear, LoRALinear)):
        raise ValueError("model is itself a single layer; use LinearNF4.from_linear(layer) instead.")
    report = QuantizeReport(bytes_before=model_nbytes(model))
    has_lora = any(isinstance(m, LoRALinear) for m in model.modules())
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear):
            if type(mod).__name__ == "Conv1D":
                report.skipped[name] = "Conv1D is not quantized here"
            continue
        parts = name.split(".")
        why = ("named in skip" if name in skip or any(s in parts for s in skip) else
               "a subclass of nn.Linear" if type(mod) is not nn.Linear else
               "weight tied to another parameter" if uses[id(mod.weight)] > 1 else
               "trainable in a LoRA model" if has_lora and mod.weight.requires_grad else None)
        if why:
            report.skipped[name] = why
            continue
        parent = model.get_submodule(".".join(parts[:-1])) if len(parts) > 1 else model
        setattr(parent, parts[-1], LinearNF4.from_linear(mod, blocksize, double_quant, compute_dtype))
        report.replaced.append(name)
    report.bytes_after = model_nbytes(model)
    return report
