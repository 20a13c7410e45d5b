"""Merging a QLoRA adapter (minilora.qlora.dequantize_model_nf4, chapter 08): dequantize, then merge exactly;
and why merging into the 4-bit weight itself (re-quantizing) loses the update."""
import pytest
import torch
from torch import nn

from minilora.config import LoRAConfig
from minilora.inject import inject_lora, lora_layers, merge_and_unload
from minilora.qlora import LinearNF4, dequantize_model_nf4, quantize_model_nf4
from minilora.quant import quantize_nf4, unpack_4bit


def _qlora(tiny):
    """A tiny Llama quantized to NF4, then LoRA on q and v with B != 0 (as if trained): QLoRA's order."""
    model = tiny.llama(vocab_size=100, hidden_size=64, intermediate_size=128)
    quantize_model_nf4(model)
    inject_lora(model, LoRAConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    return tiny.as_if_trained(model).eval()


def test_dequantize_then_merge_is_the_unmerged_qlora_model(tiny):
    model = _qlora(tiny)
    nf4 = {n: m.dequantize_weight() for n, m in model.named_modules() if isinstance(m, LinearNF4)}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        unmerged = model(tiny.IDS).logits
    assert dequantize_model_nf4(model) is model  # every mutator returns the model
    assert not any(isinstance(m, LinearNF4) for m in model.modules()) and not hasattr(model, "nf4_report")
    for name, w in nf4.items():  # exactly dequant(W_NF4), frozen, a plain nn.Linear
        layer = model.get_submodule(name)
        assert type(layer) is nn.Linear and torch.equal(layer.weight, w) and not layer.weight.requires_grad
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable  # the adapters still train
    with torch.no_grad():
        torch.testing.assert_close(model(tiny.IDS).logits, unmerged)  # nothing changed but the storage
        merge_and_unload(model)  # now allowed: the base is full precision
        torch.testing.assert_close(model(tiny.IDS).logits, unmerged, rtol=1e-5, atol=1e-5)
    assert not list(lora_layers(model))


def test_dequantize_to_16_bits_and_keep_the_training_mode(tiny):
    model = _qlora(tiny).train()
    q = model.model.layers[0].self_attn.q_proj.base_layer
    want = q.dequantize_weight(torch.bfloat16)
    dequantize_model_nf4(model, torch.bfloat16)
    back = model.model.layers[0].self_attn.q_proj.base_layer
    assert back.weight.dtype == torch.bfloat16 and torch.equal(back.weight, want)
    assert back.training and model.model.layers[1].mlp.down_proj.training


@pytest.mark.parametrize("bad,error,match", [
    ("bf16", TypeError, "floating-point torch.dtype"),
    (torch.int8, TypeError, "floating-point torch.dtype"),
])
def test_bad_dtype_is_refused_and_the_model_left_as_it_was(tiny, bad, error, match):
    model = _qlora(tiny)
    with pytest.raises(error, match=match):
        dequantize_model_nf4(model, bad)
    assert sum(isinstance(m, LinearNF4) for m in model.modules()) == 2 * 7 and hasattr(model, "nf4_report")


def test_nothing_to_dequantize_is_refused(tiny):
    with pytest.raises(ValueError, match="no LinearNF4 layer.*quantize_model_nf4"):
        dequantize_model_nf4(tiny.llama())
    with pytest.raises(TypeError, match="nn.Module"):
        dequantize_model_nf4(torch.zeros(3))
    with pytest.raises(ValueError, match="single LinearNF4.*to_linear"):
        dequantize_model_nf4(LinearNF4.from_linear(nn.Linear(8, 4)))


def test_requantizing_a_small_update_gives_back_the_same_codes():
    """Why merging into the 4-bit weight fails: dequant(W_NF4) lies exactly on NF4's grid, in the middle of its
    rounding interval, so an update smaller than half a step rounds back to the same code."""
    torch.manual_seed(0)
    w = torch.randn(64, 256) * 0.05
    q = quantize_nf4(w, 64)
    w0 = q.dequantize()
    delta = torch.randn(64, 8) @ torch.randn(8, 256) * 8e-5  # a low-rank update, about 0.5% of the weight
    assert 0.002 < delta.norm() / w0.norm() < 0.01
    again = quantize_nf4(w0 + delta, 64)
    same = unpack_4bit(again.codes, w.numel()) == unpack_4bit(q.codes, w.numel())
    assert same.float().mean() > 0.999  # (nearly) every code is unchanged...
    lost = (again.dequantize() - (w0 + delta)).norm() / delta.norm()
    assert lost > 0.95  # ...so (nearly) all of the update is gone
    assert (w0 + delta).bfloat16().float().sub(w0 + delta).norm() / delta.norm() < lost  # 16 bits keep more of it
