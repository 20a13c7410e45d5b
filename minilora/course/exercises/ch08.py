"""Checkers for chapter 08: the memory of training, the size of NF4, and a rank that fits a GPU.

* 8.1 ``lora_training_bytes(n_base, base_bits, n_trainable)``: bytes to train ``n_trainable`` fp32
  adapter parameters with AdamW on a frozen base of ``n_base`` parameters at ``base_bits`` bits each.
* 8.2 ``nf4_bits_per_param(blocksize, double_quant)``: bits per weight of NF4, block constants included.
* 8.3 ``max_rank(budget_bytes, base_bytes, per_rank)``: the largest LoRA rank whose training fits.
* 8.4 ``checkpoint_time_ratio(forward, backward, recomputed)``: a checkpointed step's time over a plain one's.
"""
from __future__ import annotations

import math

from ._core import Hint, checker

# (n_base, base_bits, n_trainable): SmolLM2-135M fp32 + q,v r=8; Llama-2-7B bf16 + q,v r=8;
# Llama-2-70B at 4.127 bits + all-linear r=16; a tiny model whose adapters outnumber nothing.
_BYTES_CASES = [(134_515_008, 32, 460_800), (6_738_415_616, 16, 4_194_304),
                (68_976_648_192, 4.127, 207_093_760), (1_000, 8, 0)]
_NF4_CASES = [(64, False), (64, True), (128, False), (32, True), (256, True), (16, False)]
GIB = 2 ** 30
# (budget, base bytes, adapter parameters per unit of rank): Llama-2-70B's NF4 base (double
# quantization) with all-linear LoRA on cards of 24, 48 and 80 GiB; Llama-2-7B's bf16 base on 24 GiB.
_RANK_CASES = [(48 * GIB, 36_362_995_904, 12_943_360), (80 * GIB, 36_362_995_904, 12_943_360),
               (24 * GIB, 36_362_995_904, 12_943_360), (24 * GIB, 13_476_831_232, 2_498_560),
               (1_000, 200, 5), (1_000, 200, 50)]


def _as_number(answer, what: str) -> float:
    if isinstance(answer, bool) or not isinstance(answer, (int, float)) and not hasattr(answer, "__float__"):
        raise Hint(f"{what} should return a number, got {type(answer).__name__}.")
    return float(answer)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@checker("Exercise 8.1: bytes to train LoRA on a frozen base")
def check_lora_training_bytes(fn) -> None:
    """``fn(n_base, base_bits, n_trainable)`` must return ``n_base * base_bits / 8 + 16 * n_trainable``."""
    for n_base, bits, n in _BYTES_CASES:
        got = _as_number(fn(n_base, bits, n), "lora_training_bytes")
        base = n_base * bits / 8
        want = base + 16 * n
        if _close(got, want):
            continue
        where = f"for n_base={n_base:,}, base_bits={bits}, n_trainable={n:,}"
        if _close(got, n_base * bits + 16 * n) or _close(got, (n_base * bits + 16 * n) / 8):
            raise Hint(f"{where}: base_bits is in bits; a byte is 8 bits, so the base costs "
                       "n_base * base_bits / 8 bytes (and only the base is given in bits).")
        if _close(got, 16 * (n_base + n)) or _close(got, base + 16 * (n_base + n)):
            raise Hint(f"{where}: the base is frozen. It has no gradient and no optimizer state, "
                       "only its weights.")
        if _close(got, base):
            raise Hint(f"{where}: you left out the adapter: each trainable parameter costs bytes too.")
        per = (got - base) / n if n else None
        if per is not None and any(_close(per, k) for k in (4, 8, 12)):
            raise Hint(f"{where}: you charged {per:g} bytes per trainable parameter. In fp32 with AdamW "
                       "each one needs its weight (4), its gradient (4) and Adam's two moments (4 + 4).")
        if per is not None and _close(per, 20):
            raise Hint(f"{where}: the adapters are already fp32, so they need no fp32 master copy: "
                       "16 bytes each, not 20.")
        if per is not None and _close(per, 2):
            raise Hint(f"{where}: LoRA adapters are trained in fp32, not 16-bit: 16 bytes each "
                       "with gradient and AdamW state.")
        raise Hint(f"{where} the answer is {want:,.0f} bytes, you returned {got:,.0f}.")


@checker("Exercise 8.2: NF4 bits per parameter")
def check_nf4_bits_per_param(fn) -> None:
    """``fn(blocksize, double_quant)``: 4 + 32/blocksize, or 4 + 8/blocksize + 32/(256 blocksize)."""
    for bs, dq in _NF4_CASES:
        got = _as_number(fn(bs, dq), "nf4_bits_per_param")
        want = 4 + 8 / bs + 32 / (256 * bs) if dq else 4 + 32 / bs
        if _close(got, want):
            continue
        where = f"for blocksize={bs}, double_quant={dq}"
        if _close(got, 4):
            raise Hint(f"{where}: 4 bits is the code alone. Each block of {bs} weights also stores its "
                       f"absmax constant, which costs 32/{bs} bits per weight (8/{bs} when double-quantized).")
        if dq and _close(got, 4 + 32 / bs):
            raise Hint(f"{where}: with double quantization the block constants are stored as int8 "
                       "(8 bits per block), plus one fp32 scale per 256 blocks.")
        if dq and _close(got, 4 + 8 / bs):
            raise Hint(f"{where}: the int8 block constants need their own fp32 scale, one per 256 "
                       f"blocks: add 32/(256·{bs}) bits per weight.")
        if dq and _close(got, 4 + 8 / bs + 32 / 256):
            raise Hint(f"{where}: one fp32 scale serves 256 blocks of {bs} weights, i.e. 256·{bs} "
                       f"weights: 32/(256·{bs}) bits per weight, not 32/256.")
        if _close(got, 4 + 16 / bs):
            raise Hint(f"{where}: the block constants are fp32 (32 bits), not 16-bit.")
        if _close(got, 4 + 4 / bs) or _close(got, 4 + 1 / bs):
            raise Hint(f"{where}: count the constant in bits: 32 bits (fp32) or 8 bits (int8) per block of {bs}.")
        if _close(got, 4 + bs / 32):
            raise Hint(f"{where}: the constant's 32 bits are shared by the {bs} weights of its "
                       f"block: 32/{bs}, not {bs}/32.")
        raise Hint(f"{where} the answer is {want:.6g} bits, you returned {got:.6g}.")


@checker("Exercise 8.3: the largest rank that fits")
def check_max_rank(fn) -> None:
    """``fn(budget_bytes, base_bytes, per_rank)``: the largest integer r >= 0 with
    ``base_bytes + 16 * per_rank * r <= budget_bytes`` (0 when nothing fits)."""
    for budget, base, per in _RANK_CASES:
        raw = fn(budget, base, per)
        if isinstance(raw, bool) or not isinstance(raw, int) and not hasattr(raw, "__index__"):
            if isinstance(raw, float) and raw == int(raw):
                raw = int(raw)
            else:
                raise Hint(f"a rank is a whole number: return an int, got {raw!r}. Round down with // "
                           "or math.floor.")
        got = int(raw)
        want = max(0, (budget - base) // (16 * per))
        if got == want:
            continue
        where = f"for budget_bytes={budget:,}, base_bytes={base:,}, per_rank={per:,}"
        if got < 0:
            raise Hint(f"{where}: the base alone does not fit, so no rank does: return 0, not a negative rank.")
        if got == want + 1:
            raise Hint(f"{where}: r = {got} needs {base + 16 * per * got:,} bytes, more than the budget. "
                       "Round down, not up or to the nearest.")
        if per and got in ((budget - base) // (4 * per), (budget - base) // (8 * per), (budget - base) // (12 * per)):
            raise Hint(f"{where}: each adapter parameter costs 16 bytes while training (fp32 weight, "
                       "gradient and two Adam moments), not just its 4-byte weight.")
        if got == budget // (16 * per):
            raise Hint(f"{where}: the frozen base takes base_bytes of the budget first; only the rest "
                       "is left for the adapters.")
        raise Hint(f"{where} the answer is r = {want}, you returned {got}.")


# (forward, backward, recomputed share of the forward): a full fine-tune (backward = 2 forwards), LoRA (the
# frozen base computes no weight gradients), SmolLM2 with LoRA (the output head, 28.3M of 134.5M multiply-adds
# per token, is not recomputed), other costs, and nothing recomputed.
_CKPT_CASES = [(1, 2, 1), (1, 1, 1), (1, 1, 1 - 28_311_552 / 134_479_872), (2, 3, 0.5), (1, 2, 0)]


@checker("Exercise 8.4: what checkpointing costs in time")
def check_checkpoint_time_ratio(fn) -> None:
    """``fn(forward, backward, recomputed)`` must return ``(forward + backward + recomputed * forward) /
    (forward + backward)``. A wrong answer is compared, on every case, with the usual mistakes."""
    def right(f, b, r):
        return (f + b + r * f) / (f + b)

    got = [_as_number(fn(*case), "checkpoint_time_ratio") for case in _CKPT_CASES]
    if all(_close(g, right(*case)) for g, case in zip(got, _CKPT_CASES)):
        return
    mistakes = [
        (lambda f, b, r: 1 / right(f, b, r), "that is the plain step over the checkpointed one; the ratio asked "
         "for is checkpointed / plain, at least 1."),
        (lambda f, b, r: right(f, b, r) - 1, "that is only the extra work; a checkpointed step still does the "
         "whole plain step too, so add forward + backward before dividing."),
        (lambda f, b, r: 1 + r * f, "divide the extra work by the time of a plain step, forward + backward, not by 1."),
        (lambda f, b, r: (f + b + r) / (f + b), "recomputed is a share of the forward pass, so it costs "
         "recomputed * forward."),
        (lambda f, b, r: (f + 2 * b + r * f) / (f + b), "checkpointing recomputes the forward pass only; the "
         "backward pass runs once."),
    ]
    for mistake, hint in mistakes:
        if all(_close(g, mistake(*case)) for g, case in zip(got, _CKPT_CASES)):
            raise Hint(hint)
    g, (f, b, r) = next((g, case) for g, case in zip(got, _CKPT_CASES) if not _close(g, right(*case)))
    raise Hint(f"for forward={f}, backward={b}, recomputed={r:.4g} the answer is {right(f, b, r):.6g}, "
               f"you returned {g:.6g}.")


__all__ = ["check_lora_training_bytes", "check_nf4_bits_per_param", "check_max_rank", "check_checkpoint_time_ratio"]
