"""QLoRA (minilora.qlora): LinearNF4 forward and backward, LoRA on it, quantizing whole models, and the
plan of which layers are quantized (the same rule as target_modules)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minilora.config import LoRAConfig
from minilora.counting import get_nb_trainable_parameters
from minilora.inject import inject_lora, merge_and_unload
from minilora.layers import LoRALinear
from minilora.qlora import LinearNF4, nf4_plan, quantize_model_nf4
from minilora.quant import NF4Tensor


def _linear(bias=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(96, 40, bias=bias, dtype=dtype)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_nf4_forward_and_backward(bias):
    lin = _linear(bias)
    q = LinearNF4.from_linear(lin)
    assert q.is_quantized and (q.in_features, q.out_features) == (96, 40)
    assert q.weight_codes.dtype == torch.uint8 and q.weight_codes.numel() == 96 * 40 // 2
    assert q.weight_nf4.double_quant and isinstance(q.weight_nf4, NF4Tensor)
    params = list(q.parameters())
    assert (len(params) == 1 and params[0] is q.bias and q.bias.dtype == torch.float32) if bias else params == []
    assert all(not p.requires_grad for p in params)
    w_hat = q.dequantize_weight()
    assert ((w_hat - lin.weight).norm() / lin.weight.norm()) < 0.12
    x = torch.randn(4, 5, 96, requires_grad=True)
    y = q(x)
    torch.testing.assert_close(y, F.linear(x, w_hat, lin.bias))
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g @ w_hat)


def test_linear_nf4_keeps_no_full_weight_for_backward():
    q = LinearNF4.from_linear(_linear())
    saved = []
    x = torch.randn(2, 96, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = q(x)
    assert all(n < 96 * 40 for n in saved)
    y.sum().backward()
    assert x.grad is not None


def test_linear_nf4_dtypes_and_to_linear():
    lin = _linear(dtype=torch.bfloat16)
    q = LinearNF4.from_linear(lin, double_quant=False)
    assert q.compute_dtype == torch.bfloat16 and q.bias.dtype == torch.float32
    assert q(torch.randn(3, 96)).dtype == torch.float32  # output in the input's dtype
    back = q.to_linear()
    assert isinstance(back, nn.Linear) and back.weight.dtype == torch.bfloat16
    assert torch.equal(back.weight, q.dequantize_weight(torch.bfloat16))
    with pytest.raises(ValueError):
        LinearNF4.from_linear(nn.Conv1d(3, 3, 1))
    with pytest.raises(TypeError):
        q(torch.ones(3, 96, dtype=torch.long))


def test_qlora_layer_trains_and_refuses_merge():
    torch.manual_seed(0)
    lin = _linear()
    layer = LoRALinear(LinearNF4.from_linear(lin), r=8, lora_alpha=16)
    A, B = layer.factors()
    assert A.dtype == B.dtype == torch.float32
    x = torch.randn(64, 96)
    torch.testing.assert_close(layer(x), layer.base_layer(x))  # B = 0: starts as the quantized base
    with torch.no_grad():  # the full-precision layer plus a rank-4 change
        target = lin(x) + x @ torch.randn(96, 4) @ torch.randn(4, 40) * 0.05
    trainable = [p for p in layer.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(A), id(B)}
    opt = torch.optim.Adam(trainable, lr=1e-2)
    codes_before = layer.base_layer.weight_codes.clone()
    losses = []
    for _ in range(30):
        loss = F.mse_loss(layer(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert torch.equal(layer.base_layer.weight_codes, codes_before)
    assert layer.base_layer.bias.grad is None
    with pytest.raises(ValueError, match="quantized"):
        layer.merge()
    assert not layer.merged


def _tiny_llama(tiny):
    return tiny.llama(vocab_size=120, hidden_size=64, intermediate_size=128, tie_word_embeddings=False)


def test_quantize_model_nf4_llama(tiny):
    model = _tiny_llama(tiny)
    ids = torch.randint(0, 120, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
    report = quantize_model_nf4(model).nf4_report
    assert len(report.replaced) == 2 * 7
    assert report.skipped == {"lm_head": "an output head"}
    assert isinstance(model.model.layers[0].self_attn.q_proj, LinearNF4)
    assert isinstance(model.lm_head, nn.Linear)
    assert report.bytes_after < 0.6 * report.bytes_before
    assert "replaced 14 linear layers" in str(report)
    with torch.no_grad():
        after = model(ids).logits
    assert ((after - before).norm() / before.norm()) < 0.2


def test_quantize_model_nf4_with_lora(tiny):
    model = _tiny_llama(tiny)
    for layer in model.model.layers:
        for n in ("q_proj", "v_proj"):
            setattr(layer.self_attn, n, LoRALinear(getattr(layer.self_attn, n), r=4, lora_alpha=8))
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.model.layers:
        for n in ("q_proj", "v_proj"):
            getattr(layer.self_attn, n).set_adapter("default")
    model.extra_head = nn.Linear(4, 4)  # still trainable: must be left alone
    report = quantize_model_nf4(model).nf4_report
    q = model.model.layers[1].self_attn.q_proj
    assert isinstance(q, LoRALinear) and isinstance(q.base_layer, LinearNF4)
    assert "model.layers.1.self_attn.q_proj.base_layer" in report.replaced
    assert report.skipped["extra_head"] == "trainable in a LoRA model"
    out = model(torch.randint(0, 120, (2, 5)), labels=torch.randint(0, 120, (2, 5)))
    out.loss.backward()
    grad = q.lora_B["default"].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    with pytest.raises(ValueError):
        q.merge()


def test_quantize_model_nf4_bad_input_and_tied(tiny):
    with pytest.raises(ValueError):
        quantize_model_nf4(nn.Linear(4, 4))
    with pytest.raises(TypeError, match="list"):
        quantize_model_nf4(_tiny_llama(tiny), skip="lm_head")
    m = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False))
    m[1].weight = m[0].weight
    report = quantize_model_nf4(m, skip=()).nf4_report
    assert report.skipped == {"1": "weight tied to another parameter"} and not report.replaced


def test_qlora_after_inject_lora(tiny):
    model = _tiny_llama(tiny)
    inject_lora(model, LoRAConfig(r=4, lora_alpha=8, target_modules="all-linear", modules_to_save=["lm_head"]))
    trainable_before = get_nb_trainable_parameters(model)[0]
    report = quantize_model_nf4(model).nf4_report
    assert len(report.replaced) == 2 * 7 and all(n.endswith(".base_layer") for n in report.replaced)
    assert all("lm_head" in n for n in report.skipped)  # the head and its trainable copy stay full precision
    assert get_nb_trainable_parameters(model)[0] == trainable_before
    ids = torch.randint(0, 120, (2, 6))
    model(ids, labels=ids).loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert len(grads) > 0 and all(g is not None for g in grads)
    with pytest.raises(ValueError, match="quantized"):
        merge_and_unload(model)


def test_qlora_adapter_dtype_without_bias():
    torch.manual_seed(0)
    layer = LoRALinear(LinearNF4.from_linear(_linear(bias=False, dtype=torch.bfloat16)), r=4, lora_alpha=8)
    A, B = layer.factors()
    assert A.dtype == B.dtype == torch.float32  # adapters in fp32 on a bf16-computing NF4 base
    x = torch.randn(3, 96, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert A.grad is not None and A.grad.dtype == torch.float32


def test_skip_uses_the_target_modules_rule_and_refuses_a_name_that_matches_nothing(tiny):
    model = _tiny_llama(tiny)
    replaced, skipped = nf4_plan(model, skip=["self_attn.q_proj", "lm_head"])  # a dotted suffix matches
    assert set(skipped) == {"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "lm_head"}
    assert set(skipped.values()) == {"named in skip"} and len(replaced) == 2 * 6
    assert nf4_plan(model, skip=[r"model.layers.1.mlp.down_proj"])[1] == {
        "model.layers.1.mlp.down_proj": "named in skip"}  # with skip given, the head is no longer skipped by default
    for bad in (["q_proj_typo"], ["layers.0.q_proj"], ["proj"]):
        with pytest.raises(ValueError, match=f"skip entry '{bad[0]}' matched no linear layer; linear layers in "
                                             "this model: q_proj, k_proj"):
            nf4_plan(model, skip=bad)
    with pytest.raises(ValueError, match="skip entry 'q_proj_typo'"):
        quantize_model_nf4(model, skip=["q_proj_typo"])
    assert not any(isinstance(m, LinearNF4) for m in model.modules())  # refused before changing anything


def test_the_adapters_own_linears_are_never_quantized(tiny):
    model = _tiny_llama(tiny)
    inject_lora(model, LoRAConfig(r=4, target_modules=["q_proj"]))
    inject_lora(model, LoRAConfig(r=4, target_modules=["q_proj"]), "frozen_one")  # inactive, so frozen
    replaced, skipped = nf4_plan(model)
    assert not any(".lora_" in n for n in list(replaced) + list(skipped))
    assert "model.layers.0.self_attn.q_proj.base_layer" in replaced


def test_quantize_model_nf4_returns_the_model_and_keeps_its_report_on_it(tiny):
    model = _tiny_llama(tiny)
    assert quantize_model_nf4(model) is model  # every mutator returns the model
    report = model.nf4_report
    assert report.replaced and report.bytes_before > report.bytes_after > 0
