"""NF4 from scratch (minilora.quant): code book, packing, block-wise round trip, sizes, QLoRA."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minilora.layers import LoRALinear
from minilora.quant import (NF4, LinearNF4, NF4Tensor, dequantize_nf4, nf4_codebook, nf4_nbytes, pack_4bit,
                            quantize_model_nf4, quantize_nf4, unpack_4bit)

PAPER = [-1, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0, 0.0796, 0.1609, 0.2461, 0.3379,
         0.4407, 0.5626, 0.7230, 1]
# bitsandbytes' hard-coded NF4 table (its CPU kernel and create_normal_map), in float32
BNB = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]
HALF_GAP = (NF4[1:] - NF4[:-1]).max().item() / 2


def test_codebook_values():
    assert NF4.dtype == torch.float32 and NF4.shape == (16,)
    torch.testing.assert_close(NF4, torch.tensor(PAPER), atol=1e-4, rtol=0)
    assert torch.equal(NF4, torch.tensor(BNB))  # bit for bit
    assert NF4[7] == 0 and NF4[0] == -1 and NF4[15] == 1 and bool((NF4[1:] > NF4[:-1]).all())
    assert not torch.equal(nf4_codebook(0.99), NF4)  # the offset matters
    with pytest.raises(ValueError):
        nf4_codebook(0.4)


def test_pack_unpack_all_codes_and_nibble_order():
    codes = torch.arange(16, dtype=torch.uint8)
    packed = pack_4bit(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == 8
    assert packed.tolist() == [0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]  # first code: high nibble
    assert torch.equal(unpack_4bit(packed, 16), codes)
    assert pack_4bit(torch.tensor([0xA])).tolist() == [0xA0]  # odd count: low nibble of the last byte is 0
    for n in (1, 3, 17, 1001):
        c = torch.randint(0, 16, (n,), dtype=torch.uint8)
        p = pack_4bit(c)
        assert p.numel() == math.ceil(n / 2)
        assert torch.equal(unpack_4bit(p, n), c)


@pytest.mark.parametrize("bad", [torch.tensor([16]), torch.tensor([-1]), torch.tensor([0.5])])
def test_pack_rejects_bad_codes(bad):
    with pytest.raises(ValueError):
        pack_4bit(bad)


@pytest.mark.parametrize("blocksize", [0, -64, 63, 64.0, True, "64"])
def test_bad_blocksize(blocksize):
    with pytest.raises(ValueError, match="blocksize"):
        quantize_nf4(torch.randn(128), blocksize=blocksize)


@pytest.mark.parametrize("w", [torch.arange(64), torch.ones(64, dtype=torch.bool), torch.empty(0),
                               torch.tensor([1.0, float("nan")]), [1.0, 2.0]])
def test_bad_input(w):
    with pytest.raises(ValueError):
        quantize_nf4(w)


def test_codes_are_nearest_codebook_values():
    torch.manual_seed(2)
    w = torch.randn(40, 64)  # reference: bitsandbytes' CPU kernel, argmin |w/absmax - NF4|
    absmax = w.abs().amax(dim=1, keepdim=True)
    ref = (w / absmax)[..., None].sub(NF4).abs().argmin(-1).reshape(-1)
    q = quantize_nf4(w, blocksize=64)
    assert torch.equal(unpack_4bit(q.codes, w.numel()).long(), ref)
    assert torch.equal(q.absmax, absmax.squeeze(1))


def test_codebook_points_are_exact():
    w = torch.cat([NF4 * 3.0, NF4.flip(0) * 0.25])  # two blocks of 16, absmax 3 and 0.25
    q = quantize_nf4(w, blocksize=16)
    torch.testing.assert_close(q.absmax, torch.tensor([3.0, 0.25]))
    assert torch.equal(dequantize_nf4(q), w)
    zero = dequantize_nf4(quantize_nf4(torch.zeros(64)))  # an all-zero block: no 0/0
    assert torch.equal(zero, torch.zeros(64))


@pytest.mark.parametrize("double_quant", [False, True])
def test_gaussian_round_trip_error(double_quant):
    torch.manual_seed(0)
    w = torch.randn(256, 512)
    q = quantize_nf4(w, blocksize=64, double_quant=double_quant)
    w_hat = dequantize_nf4(q)
    assert w_hat.shape == w.shape and w_hat.dtype == w.dtype
    rel = ((w_hat - w).norm() / w.norm()).item()
    assert 0.05 < rel < 0.1, rel
    err = (w_hat - w).abs().view(-1, 64)
    absmax = w.abs().view(-1, 64).amax(dim=1, keepdim=True)
    if not double_quant:
        assert bool((err <= HALF_GAP * absmax + 1e-6).all())
    else:  # the int8 constants add at most one half step of their own grid
        c = q.block_absmax()
        assert (c - absmax.squeeze()).abs().max() <= q.absmax_scale.max() / 254 + 1e-6
        assert bool((err <= HALF_GAP * absmax + (c - absmax.squeeze()).abs()[:, None] + 1e-5).all())
    # a uniform 4-bit grid on the same blocks does worse on Gaussian weights: the point of NF4
    uniform = torch.linspace(-1, 1, 16)
    blocks = w.view(-1, 64) / absmax
    nearest = uniform[(blocks[..., None] - uniform).abs().argmin(-1)] * absmax
    assert ((nearest.view_as(w) - w).norm() / w.norm()).item() > rel * 1.05


def test_padding_partial_block_and_dtype():
    torch.manual_seed(1)
    w = torch.randn(3, 7, dtype=torch.bfloat16)  # 21 numbers: odd, and 2 blocks of 16 with padding
    q = quantize_nf4(w, blocksize=16)
    assert q.codes.numel() == 11 and q.absmax.numel() == 2
    assert q.absmax[1] == w.reshape(-1)[16:].float().abs().max()
    w_hat = dequantize_nf4(q)
    assert w_hat.shape == (3, 7) and w_hat.dtype == torch.bfloat16
    assert dequantize_nf4(q, torch.float64).dtype == torch.float64
    assert ((w_hat.float() - w.float()).norm() / w.float().norm()) < 0.15


def test_sizes_4096_square():
    w = torch.randn(4096, 4096)
    q = quantize_nf4(w)
    assert q.codes.dtype == torch.uint8 and q.codes.numel() == 8_388_608
    assert q.absmax.dtype == torch.float32 and q.absmax.numel() == 262_144
    assert q.nbytes() == 8_388_608 + 262_144 * 4 == nf4_nbytes(4096 * 4096)
    assert q.bits_per_param() == 4.5
    dq = quantize_nf4(w, double_quant=True)
    assert dq.absmax.dtype == torch.int8 and dq.absmax.numel() == 262_144
    assert dq.absmax_scale.dtype == torch.float32 and dq.absmax_scale.numel() == 1024
    assert dq.absmax_mean.numel() == 1
    assert dq.nbytes() == 8_388_608 + 262_144 + 1024 * 4 + 4 == nf4_nbytes(4096 * 4096, double_quant=True)
    assert dq.bits_per_param() == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-5)
    assert dq.bits_per_param() == pytest.approx(4.127, abs=5e-4)
    assert w.numel() * 4 / q.nbytes() == pytest.approx(32 / 4.5)


@pytest.mark.parametrize("shape,bs", [((5,), 2), ((33, 3), 64), ((1000, 3), 64), ((17, 300), 128)])
def test_nbytes_formula_odd_shapes(shape, bs):
    for dq in (False, True):
        q = quantize_nf4(torch.randn(shape), blocksize=bs, double_quant=dq)
        assert q.nbytes() == nf4_nbytes(math.prod(shape), bs, dq)
        assert torch.isfinite(dequantize_nf4(q)).all()


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
    layer = LoRALinear(LinearNF4.from_linear(lin), r=8, alpha=16)
    A, B = layer.get_lora_AB()
    assert A.dtype == B.dtype == torch.float32
    x = torch.randn(64, 96)
    torch.testing.assert_close(layer(x), layer.base(x))  # B = 0: starts as the quantized base
    with torch.no_grad():  # the full-precision layer plus a rank-4 change
        target = lin(x) + x @ torch.randn(96, 4) @ torch.randn(4, 40) * 0.05
    trainable = [p for p in layer.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(A), id(B)}
    opt = torch.optim.Adam(trainable, lr=1e-2)
    codes_before = layer.base.weight_codes.clone()
    losses = []
    for _ in range(30):
        loss = F.mse_loss(layer(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert torch.equal(layer.base.weight_codes, codes_before)
    assert layer.base.bias.grad is None
    with pytest.raises(RuntimeError, match="quantized"):
        layer.merge()
    assert not layer.merged


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=120, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def test_quantize_model_nf4_llama():
    model = _tiny_llama()
    ids = torch.randint(0, 120, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
    report = quantize_model_nf4(model)
    assert len(report.replaced) == 2 * 7
    assert report.skipped == {"lm_head": "named in skip"}
    assert isinstance(model.model.layers[0].self_attn.q_proj, LinearNF4)
    assert isinstance(model.lm_head, nn.Linear)
    assert report.bytes_after < 0.6 * report.bytes_before
    assert "replaced 14 linear layers" in str(report)
    with torch.no_grad():
        after = model(ids).logits
    assert ((after - before).norm() / before.norm()) < 0.2


def test_quantize_model_nf4_with_lora():
    model = _tiny_llama()
    for layer in model.model.layers:
        for n in ("q_proj", "v_proj"):
            setattr(layer.self_attn, n, LoRALinear(getattr(layer.self_attn, n), r=4, alpha=8))
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in model.model.layers:
        for n in ("q_proj", "v_proj"):
            getattr(layer.self_attn, n).set_adapter("default")
    model.extra_head = nn.Linear(4, 4)  # still trainable: must be left alone
    report = quantize_model_nf4(model)
    q = model.model.layers[1].self_attn.q_proj
    assert isinstance(q, LoRALinear) and isinstance(q.base, LinearNF4)
    assert "model.layers.1.self_attn.q_proj.base" in report.replaced
    assert report.skipped["extra_head"] == "trainable in a LoRA model"
    out = model(torch.randint(0, 120, (2, 5)), labels=torch.randint(0, 120, (2, 5)))
    out.loss.backward()
    assert q.lora_B["default"].grad is not None and q.lora_B["default"].grad.abs().sum() > 0
    with pytest.raises(RuntimeError):
        q.merge()


def test_quantize_model_nf4_bad_input_and_tied():
    with pytest.raises(ValueError):
        quantize_model_nf4(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="list"):
        quantize_model_nf4(_tiny_llama(), skip="lm_head")
    m = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False))
    m[1].weight = m[0].weight
    report = quantize_model_nf4(m, skip=())
    assert report.skipped == {"1": "weight tied to another parameter"} and not report.replaced


def test_qlora_after_inject_lora():
    from minilora.config import LoRAConfig
    from minilora.inject import inject_lora, merge_and_unload, trainable_parameters

    model = _tiny_llama()
    inject_lora(model, LoRAConfig(r=4, alpha=8, target_modules="all-linear", modules_to_save=["lm_head"]))
    trainable_before = trainable_parameters(model)[0]
    report = quantize_model_nf4(model)
    assert len(report.replaced) == 2 * 7 and all(n.endswith(".base") for n in report.replaced)
    assert all("lm_head" in n for n in report.skipped)  # the head and its trainable copy stay full precision
    assert trainable_parameters(model)[0] == trainable_before
    ids = torch.randint(0, 120, (2, 6))
    model(ids, labels=ids).loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert len(grads) > 0 and all(g is not None for g in grads)
    with pytest.raises(RuntimeError, match="quantized"):
        merge_and_unload(model)


def test_qlora_adapter_dtype_without_bias():
    torch.manual_seed(0)
    layer = LoRALinear(LinearNF4.from_linear(_linear(bias=False, dtype=torch.bfloat16)), r=4, alpha=8)
    A, B = layer.get_lora_AB()
    assert A.dtype == B.dtype == torch.float32  # adapters in fp32 on a bf16-computing NF4 base
    x = torch.randn(3, 96, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert A.grad is not None and A.grad.dtype == torch.float32
