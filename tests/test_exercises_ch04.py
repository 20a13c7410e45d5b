"""Chapter 04 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import pytest
from checker_protocol import assert_specific_hint, protocol_tests

from minilora.course.exercises import ch04


# Exercise 4.1 --------------------------------------------------------------------------------------
def lora_params(shapes, r):
    return sum(r * (d_in + d_out) for d_out, d_in in shapes)


LORA_PARAMS_WRONG = {
    "full matrices": lambda shapes, r: sum(o * i for o, i in shapes),
    "r times the product": lambda shapes, r: sum(r * o * i for o, i in shapes),
    "forgot r": lambda shapes, r: sum(o + i for o, i in shapes),
    "assumed square": lambda shapes, r: sum(2 * r * o for o, _ in shapes),
    "first shape only": lambda shapes, r: r * sum(shapes[0]),
    "off by one": lambda shapes, r: lora_params(shapes, r) + 1,
    "not a number": lambda shapes, r: str(lora_params(shapes, r)),
    "a fraction": lambda shapes, r: lora_params(shapes, r) + 0.5,
}


# Exercise 4.2 --------------------------------------------------------------------------------------
def last_q_proj_regex(num_layers, last):
    layers = "|".join(str(i) for i in range(num_layers - last, num_layers))
    return rf"model\.layers\.({layers})\.self_attn\.q_proj"


LAST_Q_WRONG = {
    "a list": lambda n, k: [f"layers.{i}.self_attn.q_proj" for i in range(n - k, n)],
    "bad regex": lambda n, k: "model.layers.(",
    "partial match only": lambda n, k: "q_proj",
    "every layer": lambda n, k: r".*\.q_proj",
    "q and k": lambda n, k: rf"model\.layers\.({'|'.join(str(i) for i in range(n - k, n))})\.self_attn\.(q|k)_proj",
    "too loose a number": lambda n, k: r"model\.layers\.2\d?\.self_attn\.q_proj",
    "first digit only": lambda n, k: rf"model\.layers\.{str(n - k)[0]}.*q_proj",
    "off by one": lambda n, k: last_q_proj_regex(n, k - 1) if k > 1 else r"model\.layers\.0\.self_attn\.q_proj",
    "one layer too many": lambda n, k: last_q_proj_regex(n, min(k + 1, n)) if k < n else r"nothing",
}


# Exercise 4.3 --------------------------------------------------------------------------------------
def all_linear_count(config, r):
    d, f = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * config.head_dim
    per_layer = 2 * r * (d + d) + 2 * r * (d + kv) + 3 * r * (d + f)
    return config.num_hidden_layers * per_layer


def _kv(c):
    return c.num_key_value_heads * c.head_dim


ALL_LINEAR_WRONG = {
    "one block": lambda c, r: all_linear_count(c, r) // c.num_hidden_layers,
    "ignores GQA": lambda c, r: c.num_hidden_layers * (8 * r * c.hidden_size
                                                       + 3 * r * (c.hidden_size + c.intermediate_size)),
    "attention only": lambda c, r: c.num_hidden_layers * r * (4 * c.hidden_size + 2 * (c.hidden_size + _kv(c))),
    "mlp only": lambda c, r: c.num_hidden_layers * 3 * r * (c.hidden_size + c.intermediate_size),
    "with lm_head": lambda c, r: all_linear_count(c, r) + r * (c.hidden_size + c.vocab_size),
    "q and v only": lambda c, r: c.num_hidden_layers * r * (2 * c.hidden_size + c.hidden_size + _kv(c)),
    "a string": lambda c, r: "1221120",
}

CASES = [
    (ch04.check_lora_params, lora_params, LORA_PARAMS_WRONG),
    (ch04.check_last_q_proj_regex, last_q_proj_regex, LAST_Q_WRONG),
    (ch04.check_all_linear_count, all_linear_count, ALL_LINEAR_WRONG),
]


test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES)


@pytest.mark.parametrize("name,wrong,fragment", [
    ("full matrices", LORA_PARAMS_WRONG["full matrices"], "full weight matrices"),
    ("assumed square", LORA_PARAMS_WRONG["assumed square"], "not every matrix is square"),
    ("partial match", LAST_Q_WRONG["partial match only"], "WHOLE module name"),
    ("too loose", LAST_Q_WRONG["too loose a number"], "also selects layers [2]"),
    ("first digit only", LAST_Q_WRONG["first digit only"], "misses layers [5]"),
    ("q and k", LAST_Q_WRONG["q and k"], "only q_proj"),
    ("ignores GQA", ALL_LINEAR_WRONG["ignores GQA"], "grouped-query attention"),
    ("with lm_head", ALL_LINEAR_WRONG["with lm_head"], "lm_head"),
    ("attention only", ALL_LINEAR_WRONG["attention only"], "also adapts the MLP"),
])
def test_hints_are_specific(name, wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, cases=CASES)


def test_smollm2_config_matches_the_published_size():
    from minilora.counting import count_parameters, meta_model

    assert count_parameters(meta_model(ch04.smollm2_config())) == 134_515_008
