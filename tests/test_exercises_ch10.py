"""Chapter 10 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import math

import pytest
import torch
from checker_protocol import assert_specific_hint, protocol_tests

from minilora.course.exercises import ch10


# Exercise 10.1 -------------------------------------------------------------------------------------
def prefix_parameters(n, num_layers, hidden_size, num_heads, num_kv_heads):
    return n * num_layers * 2 * num_kv_heads * (hidden_size // num_heads)


COUNT_WRONG = {
    "hidden size, not kv size": lambda n, L, h, H, kv: n * L * 2 * h,
    "keys only": lambda n, L, h, H, kv: n * L * kv * (h // H),
    "one layer": lambda n, L, h, H, kv: n * 2 * kv * (h // H),
    "prompt tuning": lambda n, L, h, H, kv: n * h,
    "a float": lambda n, L, h, H, kv: float(prefix_parameters(n, L, h, H, kv)),
    "kv twice": lambda n, L, h, H, kv: n * L * 2 * H * (h // H) * kv,
    "head dim from kv heads": lambda n, L, h, H, kv: n * L * 2 * kv * (h // kv),
}


# Exercise 10.2 -------------------------------------------------------------------------------------
def extend_for_prompt(attention_mask, labels, n):
    batch = attention_mask.shape[0]
    return (torch.cat((attention_mask.new_ones(batch, n), attention_mask), dim=1),
            torch.cat((labels.new_full((batch, n), -100), labels), dim=1))


def _ext(mask_front, label_front, mask_fill=1, label_fill=-100, dtype=None):
    def fn(attention_mask, labels, n):
        b = attention_mask.shape[0]
        m = torch.full((b, n), mask_fill, dtype=dtype or attention_mask.dtype)
        lab = torch.full((b, n), label_fill, dtype=labels.dtype)
        m = torch.cat((m, attention_mask) if mask_front else (attention_mask, m.to(attention_mask.dtype)), dim=1)
        lab = torch.cat((lab, labels) if label_front else (labels, lab), dim=1)
        return m, lab
    return fn


EXTEND_WRONG = {
    "mask at the end": _ext(False, True),
    "labels at the end": _ext(True, False),
    "mask zeros": _ext(True, True, mask_fill=0),
    "label zeros": _ext(True, True, label_fill=0),
    "float mask": _ext(True, True, dtype=torch.float32),
    "labels untouched": lambda m, lab, n: (extend_for_prompt(m, lab, n)[0], lab),
    "cat on dim 0": lambda m, lab, n: (torch.cat((m.new_ones(n, m.shape[1]), m)),
                                       torch.cat((lab.new_full((n, lab.shape[1]), -100), lab))),
    "lists": lambda m, lab, n: tuple(t.tolist() for t in extend_for_prompt(m, lab, n)),
    "mask only": lambda m, lab, n: extend_for_prompt(m, lab, n)[0],
}


# Exercise 10.3 -------------------------------------------------------------------------------------
def prefix_attention(q, k, v, prefix_k, prefix_v):
    T, n = q.shape[0], prefix_k.shape[0]
    scores = q @ torch.cat((prefix_k, k)).T / math.sqrt(q.shape[1])  # (T, n + T)
    allowed = torch.ones(T, n + T, dtype=torch.bool).tril(n)  # every prefix position, then causal
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ torch.cat((prefix_v, v))


def _causal(q, k, v):
    T = q.shape[0]
    scores = (q @ k.T / math.sqrt(q.shape[1])).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1) @ v


def _tril(offset):
    def fn(q, k, v, pk, pv):
        T, n = q.shape[0], pk.shape[0]
        scores = q @ torch.cat((pk, k)).T / math.sqrt(q.shape[1])
        allowed = torch.ones(T, n + T, dtype=torch.bool).tril(offset(n))
        return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ torch.cat((pv, v))
    return fn


ATTENTION_WRONG = {
    "prefix ignored": lambda q, k, v, pk, pv: _causal(q, k, v),
    "tril(0)": _tril(lambda n: 0),
    "tril(n - 1)": _tril(lambda n: n - 1),
    "no mask": _tril(lambda n: 10_000),
    "no scaling": lambda q, k, v, pk, pv: prefix_attention(q * math.sqrt(q.shape[1]), k, v, pk, pv),
    "queries from the prefix too": lambda q, k, v, pk, pv: torch.cat((pv, prefix_attention(q, k, v, pk, pv))),
    "softmax over queries": lambda q, k, v, pk, pv: (
        (q @ torch.cat((pk, k)).T / math.sqrt(q.shape[1])).softmax(0) @ torch.cat((pv, v))),
}

CASES = [
    (ch10.check_prefix_parameters, prefix_parameters, COUNT_WRONG),
    (ch10.check_extend_for_prompt, extend_for_prompt, EXTEND_WRONG),
    (ch10.check_prefix_attention, prefix_attention, ATTENTION_WRONG),
]

test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES, hint_required=True)


@pytest.mark.parametrize("wrong,fragment", [
    (COUNT_WRONG["hidden size, not kv size"], "only the key/value heads"),
    (COUNT_WRONG["keys only"], "keys AND values"),
    (COUNT_WRONG["one layer"], "multiply by the number of layers"),
    (COUNT_WRONG["prompt tuning"], "is prompt tuning"),
    (COUNT_WRONG["a float"], "return an int"),
    (EXTEND_WRONG["mask at the end"], "in FRONT"),
    (EXTEND_WRONG["mask zeros"], "must be attended to"),
    (EXTEND_WRONG["label zeros"], "not 0"),
    (EXTEND_WRONG["labels at the end"], "the n -100s go in front"),
    (EXTEND_WRONG["float mask"], "keep the dtypes"),
    (EXTEND_WRONG["cat on dim 0"], "along dim=1"),
    (ATTENTION_WRONG["prefix ignored"], "the prefix changed nothing"),
    (ATTENTION_WRONG["tril(0)"], "tril(n), not tril(0)"),
    (ATTENTION_WRONG["tril(n - 1)"], "attend to itself"),
    (ATTENTION_WRONG["no mask"], "must not see the real tokens after it"),
    (ATTENTION_WRONG["no scaling"], "sqrt(d)"),
    (ATTENTION_WRONG["queries from the prefix too"], "not queries"),
])
def test_hints_are_specific(wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, cases=CASES)


def test_the_count_is_what_the_library_trains():
    """Exercise 10.1's formula is the size of minilora's prefix (itself tested against PEFT's count)."""
    from transformers import LlamaConfig

    from minilora.counting import get_nb_trainable_parameters, meta_model
    from minilora.prompting import PrefixTuningConfig, add_prompt_learning

    for n, layers, hidden, heads, kv in [(20, 30, 576, 9, 3), (4, 3, 64, 8, 2)]:
        cfg = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                          num_key_value_heads=kv, intermediate_size=4 * hidden, vocab_size=100)
        model = add_prompt_learning(meta_model(cfg), PrefixTuningConfig(n))
        assert get_nb_trainable_parameters(model)[0] == prefix_parameters(n, layers, hidden, heads, kv)


def test_the_prefix_attention_is_what_the_model_computes():
    """Exercise 10.3's solution equals PyTorch's attention with the prefix as extra keys and values."""
    torch.manual_seed(0)
    T, n, d = 6, 2, 8
    q, k, v = torch.randn(3, T, d).unbind()
    pk, pv = torch.randn(2, n, d).unbind()
    mask = torch.ones(T, n + T, dtype=torch.bool).tril(n)
    want = torch.nn.functional.scaled_dot_product_attention(q[None], torch.cat((pk, k))[None],
                                                            torch.cat((pv, v))[None], attn_mask=mask)[0]
    torch.testing.assert_close(prefix_attention(q, k, v, pk, pv), want)
