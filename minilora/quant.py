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

``minilora.qlora`` builds on this format: a frozen linear layer stored in NF4, under LoRA.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .utils import check_bool, check_int, check_number

__all__ = ["NF4_OFFSET", "NF4", "nf4_codebook", "pack_4bit", "unpack_4bit", "nf4_nbytes", "NF4Tensor", "quantize_nf4",
           "dequantize_nf4"]

NF4_OFFSET = 0.9677083


def nf4_codebook(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 values (float32, sorted, in [-1, 1], with an exact 0), as bitsandbytes builds them."""
    check_number(offset, "offset", low=0.5, high=1.0, low_open=True, high_open=True,
                 hint="It is the probability whose normal quantile becomes the code 1; bitsandbytes uses 0.9677083.")
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double()).float()
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double()).float()
    v = torch.cat([pos, torch.zeros(1), neg]).sort().values
    return v / v.max()


NF4 = nf4_codebook()
"""The NF4 code book: code ``i`` (0..15) stands for ``NF4[i]``; code 7 is exactly 0."""
_BYTE_VALUES = torch.stack([NF4.repeat_interleave(16), NF4.repeat(16)], dim=1)
"""Row ``b`` holds the two values that byte ``b`` stands for (high nibble first): one lookup per byte."""


def check_blocksize(blocksize: int, what: str = "blocksize") -> None:
    """Refuse a block size that is not an even integer >= 2 (two codes share a byte): ``TypeError`` for
    another type, ``ValueError`` for an odd or too small one. Shared with ``minilora.qlora``."""
    hint = "Two 4-bit codes share a byte, so a block holds an even number of weights; e.g. 64."
    check_int(blocksize, what, minimum=2, hint=hint)
    if blocksize % 2:
        raise ValueError(f"{what} must be an even integer >= 2, got {blocksize!r}. {hint}")


def _pack(codes: torch.Tensor) -> torch.Tensor:
    c = codes.reshape(-1).to(torch.int32)  # int32 arithmetic is much faster than uint8 shifts on CPU
    c = torch.cat([c, c.new_zeros(1)]) if c.numel() % 2 else c
    pairs = c.view(-1, 2)
    return (pairs[:, 0] * 16 + pairs[:, 1]).to(torch.uint8)


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes (integers 0..15) two per byte: element 2k high nibble, 2k+1 low nibble."""
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be an integer torch.Tensor of values 0..15, got {type(codes).__name__}.")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"codes must be an integer tensor of values 0..15, got dtype {codes.dtype}.")
    if codes.numel() and (codes.min() < 0 or codes.max() > 15):
        raise ValueError("codes must lie in 0..15 (4 bits each).")
    return _pack(codes)


def unpack_4bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` codes (uint8, 0..15) that ``pack_4bit`` stored in ``packed``."""
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"packed must be the uint8 tensor that pack_4bit returned, got {type(packed).__name__}.")
    check_int(n, "n", minimum=0, hint="n is the number of 4-bit codes to read back.")
    if packed.dtype != torch.uint8 or n > 2 * packed.numel():
        raise ValueError(f"need a uint8 tensor of at least ceil(n/2) bytes; got {packed.dtype}, "
                         f"{packed.numel()} bytes for n={n}.")
    p = packed.reshape(-1).to(torch.int32)
    return torch.stack([p >> 4, p & 0x0F], dim=-1).reshape(-1)[:n].to(torch.uint8)


def nf4_nbytes(numel: int, blocksize: int = 64, double_quant: bool = False, dq_blocksize: int = 256) -> int:
    """Exact bytes of ``quantize_nf4`` output for ``numel`` weights (codes + block constants)."""
    check_int(numel, "numel", minimum=0)
    check_blocksize(blocksize)
    check_blocksize(dq_blocksize, "dq_blocksize")
    check_bool(double_quant, "double_quant")
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
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"quantize_nf4 needs a floating-point torch.Tensor, got {type(w).__name__}; "
                        "e.g. quantize_nf4(linear.weight).")
    if not w.is_floating_point():
        raise ValueError(f"quantize_nf4 needs a floating-point tensor, got dtype {w.dtype}; convert it with .float().")
    check_blocksize(blocksize)
    check_blocksize(dq_blocksize, "dq_blocksize")
    check_bool(double_quant, "double_quant")
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
        raise TypeError(f"dequantize_nf4 takes an NF4Tensor (from quantize_nf4), got {type(q).__name__}.")
    n, bs = q.numel, q.blocksize
    values = F.embedding(q.codes.reshape(-1).to(torch.int32), _BYTE_VALUES.to(q.codes.device)).reshape(-1)
    absmax = q.block_absmax()
    pad = absmax.numel() * bs - values.numel()  # >= 0: bs is even, so at most the last block is partial
    values = (F.pad(values, (0, pad)) if pad else values).view(-1, bs) * absmax[:, None]
    return values.reshape(-1)[:n].reshape(q.shape).to(dtype or q.dtype)
