"""DoRA (use_dora=True, minilora.dora) against PEFT's: outputs, gradients, counts, merging, files, refusals."""
import copy
import json
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers.pytorch_utils import Conv1D

import minilora as ml
from minilora.counting import get_nb_trainable_parameters, lora_count, lora_matrix_count
from minilora.dora import DoraLinearLayer, DoraVariant
from minilora.io import AdapterFileError, load_adapter, save_adapter
from minilora.layers import LoRALinear, LoraVariant
from minilora.qlora import LinearNF4, quantize_model_nf4

TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn", "c_proj"], "llama": ["q_proj", "v_proj", "down_proj"]}


def mine_like(base, peft, targets, **kw):
    """minilora's DoRA model on a copy of ``base`` with every adapter tensor copied from ``peft``."""
    model = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=8, target_modules=targets,
                                                              init_lora_weights=False, use_dora=True, **kw))
    theirs = {k.removeprefix("base_model.model."): v for k, v in peft.state_dict().items()}
    assert set(theirs) == set(model.state_dict())  # the same names, lora_magnitude_vector.default.weight included
    model.load_state_dict(theirs)
    return model


def pair(tiny, arch, **kw):
    base = tiny.make[arch]()
    peft = tiny.as_if_trained(tiny.peft(base, TARGETS[arch], use_dora=True, **kw))
    return base, peft, mine_like(base, peft, TARGETS[arch], **kw)


@pytest.mark.parametrize("arch", TARGETS)
def test_same_outputs_and_trainable_count_as_peft(arch, tiny):
    base, peft, model = pair(tiny, arch)
    torch.testing.assert_close(tiny.logits(model), tiny.logits(peft), atol=1e-5, rtol=0)
    assert (tiny.logits(model) - tiny.logits(base)).abs().max() > 1e-3  # the adapter acts
    assert get_nb_trainable_parameters(model) == peft.get_nb_trainable_parameters()
    magnitudes = [n for n, p in model.named_parameters() if p.requires_grad and "lora_magnitude_vector" in n]
    assert len(magnitudes) == len(list(ml.lora_layers(model))) >= 4  # one m per adapted layer


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_same_gradients_as_peft_so_the_norm_is_detached_alike(arch, tiny):
    base, peft, model = pair(tiny, arch)
    for m in (peft, model):
        m(input_ids=tiny.IDS).logits.pow(2).mean().backward()
    theirs = {k.removeprefix("base_model.model."): p.grad for k, p in peft.named_parameters() if p.requires_grad}
    ours = {k: p.grad for k, p in model.named_parameters() if p.requires_grad}
    assert set(ours) == set(theirs)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], atol=1e-6, rtol=1e-4)


def test_dropout_in_training_acts_on_both_terms_as_in_peft(tiny):
    base, peft, model = pair(tiny, "llama", lora_dropout=0.3)
    peft.train(), model.train()
    out = []
    for m in (peft, model):
        torch.manual_seed(11)
        out.append(m(input_ids=tiny.IDS).logits)
    torch.testing.assert_close(out[1], out[0], atol=1e-5, rtol=0)
    model.eval()
    torch.testing.assert_close(tiny.logits(model), tiny.logits(peft.eval()), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_the_layer_computes_the_papers_formula(kind):
    torch.manual_seed(0)
    base = nn.Linear(6, 5) if kind == "linear" else Conv1D(5, 6)  # Conv1D(out, in) stores W as (in, out)
    layer = LoRALinear(copy.deepcopy(base), r=2, lora_alpha=4, use_dora=True)
    W0 = base.weight.detach() if kind == "linear" else base.weight.detach().T  # (out, in)
    m = layer.lora_magnitude_vector["default"].weight
    torch.testing.assert_close(m, W0.norm(dim=1))  # initialised to ||W_0|| row-wise (B = 0)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), base(x))  # the layer starts as the base layer
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        m.mul_(torch.linspace(0.5, 1.5, 5))
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight

    def paper(detach: bool) -> torch.Tensor:
        V = W0 + 2.0 * B @ A  # (out, in), scaling = 4 / 2
        norm = V.norm(dim=1)
        return x @ ((m / (norm.detach() if detach else norm))[:, None] * V).T + base.bias

    y = layer(x)
    torch.testing.assert_close(y, paper(detach=True), atol=1e-5, rtol=0)
    grad_B, = torch.autograd.grad(y.pow(2).sum(), B)
    ref_B, = torch.autograd.grad(paper(detach=True).pow(2).sum(), B)  # the norm is a constant (section 4.3)
    torch.testing.assert_close(grad_B, ref_B, atol=1e-5, rtol=1e-4)
    other, = torch.autograd.grad(paper(detach=False).pow(2).sum(), B)
    assert (other - ref_B).abs().max() > 1e-3  # the test tells a detached norm from one that is not


@pytest.mark.parametrize("arch", TARGETS)
def test_merge_and_unmerge_are_exact(arch, tiny):
    base, peft, model = pair(tiny, arch)
    before = tiny.logits(model)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    ml.merge_adapter(model)
    peft.merge_adapter()
    torch.testing.assert_close(tiny.logits(model), before, atol=1e-5, rtol=0)
    merged = {k.removeprefix("base_model.model."): v for k, v in peft.state_dict().items() if "base_layer" in k}
    for n, p in model.named_parameters():
        if "base_layer" in n:
            torch.testing.assert_close(p, merged[n], atol=1e-6, rtol=1e-5)  # PEFT's merged weights
    assert any((p - weights[n]).abs().max() > 1e-3 for n, p in model.named_parameters() if "base_layer" in n)
    ml.unmerge_adapter(model)
    for n, p in model.named_parameters():
        if "base_layer" in n:
            torch.testing.assert_close(p, weights[n], atol=1e-6, rtol=0)
    torch.testing.assert_close(tiny.logits(model), before, atol=1e-5, rtol=0)
    plain = ml.merge_and_unload(model)
    assert not list(ml.lora_layers(plain))
    torch.testing.assert_close(tiny.logits(plain), before, atol=1e-5, rtol=0)


def test_stacked_lora_and_dora_adapters_compute_and_merge_as_peft(tiny):
    base, targets = tiny.llama(), TARGETS["llama"]
    peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                          init_lora_weights=False))
    peft.add_adapter("d", LoraConfig(r=2, lora_alpha=4, target_modules=targets, init_lora_weights=False,
                                     use_dora=True))
    peft.base_model.set_adapter(["default", "d"])
    tiny.as_if_trained(peft)
    model = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=8, target_modules=targets,
                                                              init_lora_weights=False))
    ml.add_adapter(model, "d", ml.LoRAConfig(r=2, lora_alpha=4, target_modules=targets, init_lora_weights=False,
                                             use_dora=True))
    ml.set_adapter(model, ["default", "d"])
    model.load_state_dict({k.removeprefix("base_model.model."): v for k, v in peft.state_dict().items()})
    assert get_nb_trainable_parameters(model) == peft.get_nb_trainable_parameters()
    torch.testing.assert_close(tiny.logits(model), tiny.logits(peft), atol=1e-5, rtol=0)
    before = tiny.logits(model)
    ml.merge_adapter(model)
    torch.testing.assert_close(tiny.logits(model), before, atol=1e-5, rtol=0)
    ml.unmerge_adapter(model)
    torch.testing.assert_close(tiny.logits(model), before, atol=1e-5, rtol=0)
    ml.delete_adapter(model, "d")  # the plain adapter is left, without a magnitude
    layer = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert "d" not in layer.lora_magnitude_vector and layer.adapters == ["default"]


@pytest.mark.parametrize("arch", TARGETS)
def test_peft_file_loads_in_minilora_and_back(arch, tiny, tmp_path):
    # BERT's file names task_type SEQ_CLS, with which PEFT expects the classifier in the file
    base, peft, _ = pair(tiny, arch, **({"modules_to_save": ["classifier"]} if arch == "bert" else {}))
    peft.save_pretrained(tmp_path / "peft")
    model = load_adapter(copy.deepcopy(base), tmp_path / "peft")
    torch.testing.assert_close(tiny.logits(model), tiny.logits(peft), atol=1e-5, rtol=0)
    save_adapter(model, tmp_path / "mine")
    ours, theirs = load_file(tmp_path / "mine" / "adapter_model.safetensors"), \
        load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert set(ours) == set(theirs)
    assert any(k.endswith(".lora_magnitude_vector") for k in ours)  # PEFT's key, without ".weight"
    assert json.loads((tmp_path / "mine" / "adapter_config.json").read_text())["use_dora"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "mine").eval()
    torch.testing.assert_close(tiny.logits(back), tiny.logits(peft), atol=1e-5, rtol=0)


def test_config_builds_the_same_model_in_peft(tiny):
    base = tiny.gpt2()
    config = ml.LoRAConfig(r=4, lora_alpha=8, target_modules=["c_attn"], use_dora=True)
    assert config.to_dict()["use_dora"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft = get_peft_model(copy.deepcopy(base), LoraConfig(**config.to_dict()))
    model = ml.inject_lora(copy.deepcopy(base), config)
    assert get_nb_trainable_parameters(model) == peft.get_nb_trainable_parameters()
    assert lora_count(base, config) == peft.get_nb_trainable_parameters()
    torch.testing.assert_close(tiny.logits(model), tiny.logits(base), atol=1e-5, rtol=0)  # m = ||W_0||: a no-op
    d = 32  # c_attn: 32 -> 96, in 2 blocks
    assert lora_count(base, config)[0] == 2 * lora_matrix_count(d, 3 * d, 4, use_dora=True) == 2 * (4 * 128 + 96)


def test_dora_on_an_embedding_is_refused_before_the_model_changes(tiny):
    base = tiny.llama()
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match="an embedding: minilora implements DoRA for linear layers only"):
        ml.inject_lora(model, ml.LoRAConfig(target_modules=["embed_tokens", "q_proj"], use_dora=True))
    assert not list(ml.lora_layers(model)) and not hasattr(model, "peft_config")


def test_dora_on_an_nf4_base_is_refused(tiny):
    model = tiny.llama()
    quantize_model_nf4(model)
    with pytest.raises(ValueError, match=r"quantized \(NF4\) base.*use_dora=False \(QLoRA\)"):
        ml.inject_lora(model, ml.LoRAConfig(target_modules=["q_proj"], use_dora=True))
    assert not list(ml.lora_layers(model))
    with pytest.raises(ValueError, match="quantized"):
        LoRALinear(LinearNF4.from_linear(nn.Linear(64, 64)), r=2, use_dora=True)


def test_weighted_combination_of_dora_adapters_is_refused(tiny):
    model = ml.inject_lora(tiny.bert(), ml.LoRAConfig(use_dora=True))
    ml.add_adapter(model, "b", ml.LoRAConfig())
    with pytest.raises(ValueError, match=r"adapters \['default'\] use DoRA"):
        ml.add_weighted_adapter(model, ["default", "b"], [0.5, 0.5], "mix", combination_type="linear")


def test_bad_use_dora_and_a_mismatched_file_are_refused(tiny, tmp_path):
    with pytest.raises(TypeError, match="use_dora must be True or False"):
        ml.LoRAConfig(use_dora="yes")
    base, peft, _ = pair(tiny, "bert")
    peft.save_pretrained(tmp_path)
    model = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=8, target_modules=TARGETS["bert"]))
    with pytest.raises(AdapterFileError, match="use_dora: model False, file True"):
        load_adapter(model, tmp_path)


def test_magnitude_module_has_peft_names():
    plain = LoRALinear(nn.Linear(4, 3), r=2)  # the container exists from __init__, empty: no parameter, no key
    assert isinstance(plain.lora_magnitude_vector, nn.ModuleDict) and len(plain.lora_magnitude_vector) == 0
    assert not any("magnitude" in k for k in plain.state_dict())
    layer = LoRALinear(nn.Linear(4, 3), r=2, use_dora=True)
    assert isinstance(layer.lora_magnitude_vector["default"], DoraLinearLayer)
    assert isinstance(layer.lora_variant["default"], DoraVariant) and type(plain.lora_variant["default"]) is LoraVariant
    assert layer.adapter_layer_names == ("lora_A", "lora_B", "lora_magnitude_vector")
    assert "adapter_layer_names" not in vars(layer)  # a class attribute, never changed on the instance
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {
        "lora_A.default.weight", "lora_B.default.weight", "lora_magnitude_vector.default.weight"}
    layer.update_layer("plain", r=2, lora_alpha=2)
    layer.set_adapter("plain")  # an adapter without a magnitude
    assert not layer.lora_magnitude_vector["default"].weight.requires_grad
