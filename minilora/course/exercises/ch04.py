"""Checkers for chapter 04: where LoRA goes in a transformer, and how many parameters it trains.

* 4.1 ``lora_params(shapes, r)``: LoRA parameters for a list of weight shapes ``(d_out, d_in)``.
* 4.2 ``last_q_proj_regex(num_layers, last)``: a ``target_modules`` regex for the last layers' ``q_proj``.
* 4.3 ``all_linear_count(config, r)``: the ``"all-linear"`` count of a Llama model, from its config.
"""
from __future__ import annotations

import re

from transformers import LlamaConfig

from ...config import LoRAConfig
from ...counting import lora_count, meta_model
from ...inject import resolve_targets
from ._core import Hint, checker

# Weight shapes (d_out, d_in): MiniLM's q and v, one SmolLM2 block, one Llama-2-70B block.
_SHAPE_CASES = [
    ([(384, 384), (384, 384)], 8),
    ([(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)], 4),
    ([(8192, 8192), (1024, 8192), (1024, 8192), (8192, 8192), (28672, 8192), (28672, 8192), (8192, 28672)], 16),
]


def _as_int(answer, what: str) -> int:
    if isinstance(answer, bool) or not isinstance(answer, (int, float)) and not hasattr(answer, "__index__"):
        raise Hint(f"{what} should return a whole number (an int), got {type(answer).__name__}.")
    if int(answer) != answer:
        raise Hint(f"{what} should return a whole number, got {answer}.")
    return int(answer)


@checker("Exercise 4.1: LoRA parameters for a list of shapes")
def check_lora_params(fn) -> None:
    """``fn(shapes, r)`` must return the sum of ``r * (d_in + d_out)`` over ``(d_out, d_in)`` shapes."""
    for shapes, r in _SHAPE_CASES:
        got = _as_int(fn(list(shapes), r), "lora_params")
        want = sum(r * (o + i) for o, i in shapes)
        if got == want:
            continue
        if got == sum(o * i for o, i in shapes):
            raise Hint("that is the size of the full weight matrices. LoRA trains A (r × d_in) and "
                       "B (d_out × r) instead.")
        if got == sum(r * o * i for o, i in shapes):
            raise Hint("A has r × d_in entries and B has d_out × r: add them, r·(d_in + d_out), "
                       "do not multiply d_in and d_out.")
        if got == sum(o + i for o, i in shapes):
            raise Hint("you forgot the rank: each matrix costs r·(d_in + d_out).")
        if got in (sum(2 * r * o for o, _ in shapes), sum(2 * r * i for _, i in shapes)):
            raise Hint(f"not every matrix is square: in {shapes[1] if len(shapes) > 1 else shapes[0]} "
                       "d_out and d_in differ, so use both, r·(d_in + d_out).")
        if got == r * sum(o + i for o, i in shapes[:1]):
            raise Hint("sum over every shape in the list, not just the first.")
        raise Hint(f"for shapes={shapes} and r={r} the answer is {want:,}, you returned {got:,}.")


def _tiny_llama(num_layers: int):
    return meta_model(LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=num_layers,
                                  num_attention_heads=2, num_key_value_heads=1, vocab_size=10))


@checker("Exercise 4.2: a regex for the last layers' q_proj")
def check_last_q_proj_regex(fn) -> None:
    """``fn(num_layers, last)`` must return a regex selecting ``q_proj`` in the last ``last`` layers only."""
    for num_layers, last in [(6, 2), (30, 10), (30, 1), (12, 12), (100, 3)]:
        pattern = fn(num_layers, last)
        if not isinstance(pattern, str):
            raise Hint(f"return one string (a regular expression), not a {type(pattern).__name__}: a "
                       "list would be read as a list of name suffixes.")
        try:
            re.compile(pattern)
        except re.error as e:
            raise Hint(f"{pattern!r} is not a valid regular expression: {e}.") from None
        model = _tiny_llama(num_layers)
        want = {f"model.layers.{i}.self_attn.q_proj" for i in range(num_layers - last, num_layers)}
        where = f"with num_layers={num_layers}, last={last}, your pattern {pattern!r}"
        try:
            got = set(resolve_targets(model, LoRAConfig(target_modules=pattern)))
        except ValueError:
            raise Hint(f"{where} matched nothing. A string must match the WHOLE module name "
                       f"(re.fullmatch), e.g. 'model.layers.{num_layers - 1}.self_attn.q_proj': "
                       r"start with 'model\.layers\.' or '.*'.") from None
        others = sorted({n.rsplit(".", 1)[-1] for n in got} - {"q_proj"})
        if others:
            raise Hint(f"{where} also selects {others}; only q_proj should be adapted.")
        layer = lambda n: int(n.split(".")[2])  # noqa: E731
        extra = sorted(layer(n) for n in got - want)
        missing = sorted(layer(n) for n in want - got)
        if extra:
            raise Hint(f"{where} also selects layers {extra}. Spell out exactly the layer numbers you "
                       r"want between the dots, e.g. 'model\.layers\.(28|29)\.self_attn\.q_proj'.")
        if missing:
            raise Hint(f"{where} misses layers {missing}; the last {last} layers are "
                       f"{num_layers - last} to {num_layers - 1} (numbering starts at 0).")


def smollm2_config():
    """SmolLM2-135M's published hyper-parameters as a ``LlamaConfig`` (no download needed)."""
    return LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)


@checker("Exercise 4.3: the all-linear count from a Llama config")
def check_all_linear_count(fn) -> None:
    """``fn(config, r)`` must equal ``lora_count`` with ``target_modules='all-linear'``."""
    cases = [(smollm2_config(), 4),
             (LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=8,
                          num_key_value_heads=2, vocab_size=100), 2)]
    for config, r in cases:
        got = _as_int(fn(config, r), "all_linear_count")
        want, _ = lora_count(config, LoRAConfig(r=r, target_modules="all-linear"))
        if got == want:
            continue
        d, f, L, v = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
        kv = config.num_key_value_heads * config.head_dim
        attn, mlp = r * (2 * (d + d) + 2 * (d + kv)), 3 * r * (d + f)
        where = (f"for hidden_size={d}, intermediate_size={f}, num_key_value_heads={config.num_key_value_heads}, "
                 f"num_hidden_layers={L}, r={r}")
        if got == want // L:
            raise Hint(f"{where} you counted one block; every one of the {L} layers has these seven projections.")
        if got == L * (4 * r * 2 * d + mlp):
            raise Hint(f"{where}: k_proj and v_proj are smaller than q_proj. With grouped-query attention they "
                       f"output num_key_value_heads × head_dim = {config.num_key_value_heads} × "
                       f"{config.head_dim} = {kv} features, not {d}.")
        if got == L * attn:
            raise Hint(f"{where}: 'all-linear' also adapts the MLP, gate_proj and up_proj ({d} → {f}) "
                       f"and down_proj ({f} → {d}).")
        if got == L * mlp:
            raise Hint(f"{where}: you counted only the MLP; add q_proj, k_proj, v_proj and o_proj.")
        if got == want + r * (d + v):
            raise Hint("'all-linear' leaves out the output head lm_head (it maps to the vocabulary); "
                       "drop its r·(hidden_size + vocab_size).")
        raise Hint(f"{where} the answer is {want:,}, you returned {got:,}. Per layer: q_proj and o_proj "
                   f"are {d} → {d}, k_proj and v_proj {d} → {kv}, gate/up {d} → {f}, down {f} → {d}.")


__all__ = ["check_lora_params", "check_last_q_proj_regex", "check_all_linear_count", "smollm2_config"]
