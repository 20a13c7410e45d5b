"""Checkers for chapter 12: scaling out.

* 12.1 ``allreduce_bytes(r, d_model, n_layers, bytes_per_value)``: the bytes DDP all-reduces per step for
  LoRA of rank r on the query and value projections (square ``d_model x d_model``) of every layer.
* 12.2 ``zero_bytes_per_gpu(n_params, world_size, stage)``: a full fine-tune with mixed-precision Adam,
  bytes per GPU under ZeRO stage 0 (plain DDP), 1, 2 or 3.
* 12.3 ``batch_and_steps(n_examples, per_device, grad_accum_steps, world_size)``: the effective batch and
  the optimizer steps in one epoch (the last incomplete batch dropped).
"""
from __future__ import annotations

from ...config import LoRAConfig
from ...counting import LLAMA2, llama2_config, lora_count
from ...memory import MemoryBreakdown
from ..distributed import STAGES, effective_batch_size, sharded_bytes
from ._core import Hint, checker

__all__ = ["check_allreduce_bytes", "check_zero_bytes_per_gpu", "check_batch_and_steps"]


def _number(x, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise Hint(f"{what} should be a number, got {type(x).__name__}.")
    return float(x)


@checker("Exercise 12.1: bytes all-reduced per step")
def check_allreduce_bytes(fn) -> None:
    """``fn(r, d_model, n_layers, bytes_per_value)`` must return ``n_layers * 2 * r * 2 * d_model * bytes_per_value``,
    and agree with ``counting.lora_count`` on Llama-2-7B (r=8 on q_proj and v_proj, fp32 gradients)."""
    for r, d, layers, size in ((8, 4096, 32, 4), (4, 384, 6, 4), (16, 8192, 80, 2), (1, 64, 2, 2)):
        got = _number(fn(r, d, layers, size), "the result")
        params = layers * 2 * r * 2 * d
        want = params * size
        if got == want:
            continue
        case = f"for r={r}, d_model={d}, n_layers={layers}, bytes_per_value={size}"
        if got == params:
            raise Hint(f"{case} you returned {got:,.0f}: that is the number of gradient values. Multiply by "
                       "bytes_per_value to get bytes.")
        if got == want / 2:
            raise Hint(f"{case} you got half the answer. Each adapted matrix has two factors, A (r x d_in) and "
                       "B (d_out x r): r (d_in + d_out) values; and each layer has two adapted matrices, query and "
                       "value.")
        if got == layers * 2 * d * d * size:
            raise Hint(f"{case} you counted the full d_model x d_model matrices: that is what a full fine-tune of "
                       "them would all-reduce. LoRA's gradients are those of A and B only.")
        raise Hint(f"{case} the answer is {want:,.0f} bytes; you returned {got:,.0f}.")
    trainable = lora_count(llama2_config("7b"), LoRAConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))[0]
    llama = LLAMA2["7b"]
    if fn(8, llama["hidden_size"], llama["num_hidden_layers"], 4) != 4 * trainable:
        raise Hint("your formula disagrees with minilora.counting.lora_count on Llama-2-7B.")


def _breakdown(n: int) -> MemoryBreakdown:
    """Mixed-precision Adam per parameter: 2 (16-bit weight) + 2 (16-bit gradient) + 8 (moments) + 4 (master)."""
    return MemoryBreakdown("full", n, n, weights=2 * n, gradients=2 * n, optimizer=8 * n, master=4 * n)


@checker("Exercise 12.2: ZeRO's bytes per GPU")
def check_zero_bytes_per_gpu(fn) -> None:
    """``fn(n_params, world_size, stage)`` for stage 0..3 must equal ``distributed.sharded_bytes`` of
    mixed-precision Adam (2 + 2 + 12 bytes per parameter)."""
    names = list(STAGES)
    for n, w in ((7_000_000_000, 8), (1_000_000, 4), (70_000_000_000, 64)):
        for stage in range(4):
            got = _number(fn(n, w, stage), "the result")
            want = sharded_bytes(_breakdown(n), w, names[stage])["total"]
            if abs(got - want) <= 1e-9 * want:
                continue
            case = f"for n_params={n:,}, world_size={w}, stage={stage}"
            if stage == 0 and abs(got - 12 * n) < 1:
                raise Hint(f"{case} you left out a part: per parameter mixed-precision Adam holds 2 (bf16 weight) "
                           "+ 2 (bf16 gradient) + 4 (fp32 master weight) + 4 + 4 (Adam's moments) = 16 bytes.")
            if abs(got - 16 * n / w) < 1 and stage < 3:
                raise Hint(f"{case} you divided everything by the world size: stage {stage} shards only "
                           f"{', '.join(STAGES[names[stage]])}; every GPU keeps the rest whole.")
            if stage == 1 and abs(got - (2 * n + 14 * n / w)) < 1:
                raise Hint(f"{case} you sharded the gradients too: that is stage 2. Stage 1 shards the optimizer "
                           "state (the fp32 master weights and the two moments, 12 bytes) only.")
            if stage == 2 and abs(got - (4 * n + 12 * n / w)) < 1:
                raise Hint(f"{case} stage 2 shards the 2-byte gradients as well as the 12 bytes of optimizer state.")
            raise Hint(f"{case} the answer is {want / 1e9:,.3f} GB ({want:,.0f} bytes); you returned {got:,.0f}.")


@checker("Exercise 12.3: effective batch and steps per epoch")
def check_batch_and_steps(fn) -> None:
    """``fn(n_examples, per_device, grad_accum_steps, world_size)`` must return ``(effective batch, steps)``
    with ``steps = n_examples // effective batch``."""
    for n, b, g, w in ((1600, 8, 1, 2), (1600, 4, 2, 2), (10_000, 16, 4, 8), (1000, 3, 1, 1), (50, 8, 4, 2)):
        got = fn(n, b, g, w)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Hint("return two numbers: (effective batch, optimizer steps per epoch).")
        batch, steps = (_number(v, "each value") for v in got)
        want = effective_batch_size(b, g, w)
        case = f"for n_examples={n}, per_device={b}, grad_accum_steps={g}, world_size={w}"
        if batch != want:
            if batch in (b * g, b * w, b):
                raise Hint(f"{case} the effective batch is {batch:g}: one optimizer step sees per_device examples "
                           "in each of grad_accum_steps micro-batches on each of world_size processes: multiply "
                           "all three.")
            raise Hint(f"{case} the effective batch is {want}; you returned {batch:g}.")
        if steps != n // want:
            if steps == -(-n // want):
                raise Hint(f"{case} you rounded up: the last incomplete batch is dropped, so round down (//).")
            if steps == n / want:
                raise Hint(f"{case} steps are whole: use n_examples // effective batch.")
            raise Hint(f"{case} an epoch has {n // want} optimizer steps; you returned {steps:g}.")
