"""Chapter 08 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import math

import pytest
import torch
from checker_protocol import assert_specific_hint, protocol_tests

from minilora.course.exercises import ch08


# Exercise 8.1 --------------------------------------------------------------------------------------
def lora_training_bytes(n_base, base_bits, n_trainable):
    return n_base * base_bits / 8 + 16 * n_trainable


BYTES_WRONG = {
    "bits not bytes": lambda n, b, t: n * b + 16 * t,
    "base trained too": lambda n, b, t: 16 * (n + t),
    "adapter forgotten": lambda n, b, t: n * b / 8,
    "weight and grad only": lambda n, b, t: n * b / 8 + 8 * t,
    "one Adam moment": lambda n, b, t: n * b / 8 + 12 * t,
    "master copy of fp32 adapters": lambda n, b, t: n * b / 8 + 20 * t,
    "adapters in bf16": lambda n, b, t: n * b / 8 + 2 * t,
    "off by one byte": lambda n, b, t: lora_training_bytes(n, b, t) + 1,
    "a string": lambda n, b, t: str(lora_training_bytes(n, b, t)),
}


# Exercise 8.2 --------------------------------------------------------------------------------------
def nf4_bits_per_param(blocksize, double_quant):
    if double_quant:
        return 4 + 8 / blocksize + 32 / (256 * blocksize)
    return 4 + 32 / blocksize


NF4_WRONG = {
    "code only": lambda bs, dq: 4,
    "16-bit constants": lambda bs, dq: 4 + 16 / bs,
    "constants in bytes": lambda bs, dq: 4 + (1 if dq else 4) / bs,
    "double quant ignored": lambda bs, dq: 4 + 32 / bs,
    "second level forgotten": lambda bs, dq: 4 + 8 / bs if dq else 4 + 32 / bs,
    "second level per 256 weights": lambda bs, dq: 4 + 8 / bs + 32 / 256 if dq else 4 + 32 / bs,
    "inverted": lambda bs, dq: 4 + bs / 32,
    "always 4.5": lambda bs, dq: 4.5,
}


# Exercise 8.3 --------------------------------------------------------------------------------------
def max_rank(budget_bytes, base_bytes, per_rank):
    return max(0, (budget_bytes - base_bytes) // (16 * per_rank))


RANK_WRONG = {
    "negative when nothing fits": lambda b, base, p: (b - base) // (16 * p),
    "rounded up": lambda b, base, p: max(0, math.ceil((b - base) / (16 * p))),
    "rounded to nearest": lambda b, base, p: max(0, round((b - base) / (16 * p))),
    "4 bytes per parameter": lambda b, base, p: max(0, (b - base) // (4 * p)),
    "base ignored": lambda b, base, p: b // (16 * p),
    "a fraction": lambda b, base, p: max(0.0, (b - base) / (16 * p)),
    "a power of two only": lambda b, base, p: 2 ** int(math.log2(max(1, max_rank(b, base, p)))),
}


# Exercise 8.4 --------------------------------------------------------------------------------------
def checkpoint_time_ratio(forward, backward, recomputed):
    return (forward + backward + recomputed * forward) / (forward + backward)


CKPT_WRONG = {
    "inverted": lambda f, b, r: 1 / checkpoint_time_ratio(f, b, r),
    "extra work only": lambda f, b, r: r * f / (f + b),
    "not divided": lambda f, b, r: 1 + r * f,
    "share not scaled": lambda f, b, r: (f + b + r) / (f + b),
    "backward recomputed too": lambda f, b, r: (f + 2 * b + r * f) / (f + b),
    "always 4/3": lambda f, b, r: 4 / 3,
    "a string": lambda f, b, r: str(checkpoint_time_ratio(f, b, r)),
}


CASES = [
    (ch08.check_lora_training_bytes, lora_training_bytes, BYTES_WRONG),
    (ch08.check_nf4_bits_per_param, nf4_bits_per_param, NF4_WRONG),
    (ch08.check_max_rank, max_rank, RANK_WRONG),
    (ch08.check_checkpoint_time_ratio, checkpoint_time_ratio, CKPT_WRONG),
]


test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES)


@pytest.mark.parametrize("wrong,fragment", [
    (BYTES_WRONG["bits not bytes"], "a byte is 8 bits"),
    (BYTES_WRONG["base trained too"], "the base is frozen"),
    (BYTES_WRONG["weight and grad only"], "two moments"),
    (BYTES_WRONG["master copy of fp32 adapters"], "no fp32 master copy"),
    (NF4_WRONG["code only"], "absmax constant"),
    (NF4_WRONG["16-bit constants"], "fp32 (32 bits)"),
    (NF4_WRONG["second level forgotten"], "own fp32 scale"),
    (NF4_WRONG["second level per 256 weights"], "not 32/256"),
    (RANK_WRONG["negative when nothing fits"], "not a negative rank"),
    (RANK_WRONG["rounded up"], "Round down"),
    (RANK_WRONG["4 bytes per parameter"], "16 bytes while training"),
    (RANK_WRONG["base ignored"], "takes base_bytes of the budget"),
    (RANK_WRONG["a fraction"], "whole number"),
    (CKPT_WRONG["inverted"], "checkpointed / plain"),
    (CKPT_WRONG["extra work only"], "only the extra work"),
    (CKPT_WRONG["not divided"], "not by 1"),
    (CKPT_WRONG["share not scaled"], "recomputed * forward"),
    (CKPT_WRONG["backward recomputed too"], "the backward pass runs once"),
])
def test_hints_are_specific(wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, cases=CASES)


def test_cases_agree_with_the_library():
    """The checkers' numbers are minilora's: training_memory, nf4_nbytes and Llama-2's shapes."""
    from minilora.config import LoRAConfig
    from minilora.counting import llama2_config, lora_count, meta_model
    from minilora.memory import training_memory, weight_bytes
    from minilora.quant import nf4_nbytes, quantize_nf4

    def lora_trainable_count(model, r, targets):
        return lora_count(model, LoRAConfig(r=r, target_modules=targets))[0]

    big = meta_model(llama2_config("70b"))
    base = weight_bytes(big, "nf4-dq")
    per_rank = lora_trainable_count(big, 1, "all-linear")
    assert (base, per_rank) == ch08._RANK_CASES[0][1:]
    r = max_rank(48 * 2 ** 30, base, per_rank)
    assert training_memory(big, per_rank * r, "nf4-dq").total <= 48 * 2 ** 30
    assert training_memory(big, per_rank * (r + 1), "nf4-dq").total > 48 * 2 ** 30
    seven = meta_model(llama2_config("7b"))
    assert ch08._RANK_CASES[3][1:] == (weight_bytes(seven, torch.bfloat16),
                                       lora_trainable_count(seven, 1, "all-linear"))
    for bs, dq in ch08._NF4_CASES:  # the formula is the large-tensor limit of the exact byte count
        n = bs * 256 * 64
        assert 8 * nf4_nbytes(n, bs, dq) / n == pytest.approx(nf4_bits_per_param(bs, dq), abs=1e-4)
    q = quantize_nf4(torch.randn(512, 512), 64, double_quant=True)
    assert q.bits_per_param() == pytest.approx(nf4_bits_per_param(64, True), abs=1e-3)
