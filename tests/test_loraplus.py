"""LoRA+ optimizer: the same parameter groups, learning rates and weight decays as PEFT's
create_loraplus_optimizer, on tiny BERT, GPT-2 and Llama models; bad input refused."""
import copy
import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer as peft_create_loraplus_optimizer

import minilora as ml
from minilora.loraplus import create_loraplus_optimizer, loraplus_groups

CASES = {  # arch -> LoRA config fields: embeddings, Conv1D, trained head and biases between them
    "llama": dict(target_modules=["embed_tokens", "q_proj", "v_proj"]),
    "gpt2": dict(target_modules=["c_attn", "wte"], fan_in_fan_out=True),
    "bert": dict(target_modules=["query", "value"], modules_to_save=["classifier"], bias="all"),
}
KW = dict(lr=2e-4, loraplus_lr_ratio=16, loraplus_weight_decay=0.01, loraplus_lr_embedding=5e-6, betas=(0.8, 0.95))


def named(model, optimizer, prefix=""):
    names = {id(p): n.removeprefix(prefix) for n, p in model.named_parameters()}
    return [([names[id(p)] for p in g["params"]], g["lr"], g["weight_decay"], g["betas"])
            for g in optimizer.param_groups]


@pytest.mark.parametrize("arch", CASES)
def test_groups_and_learning_rates_equal_peft(arch, tiny):
    fields = {k: v for k, v in CASES[arch].items() if k != "fan_in_fan_out"}
    base = tiny.make[arch]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's notes on fan_in_fan_out for Conv1D
        pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, **CASES[arch]))
    model = copy.deepcopy(base)
    ml.inject_lora(model, ml.LoRAConfig(r=4, lora_alpha=8, **fields))
    theirs = named(pm, peft_create_loraplus_optimizer(pm, torch.optim.AdamW, **KW), "base_model.model.")
    ours = named(model, create_loraplus_optimizer(model, torch.optim.AdamW, **KW))
    assert ours == theirs
    lora_B = [n for n, p in model.named_parameters() if "lora_B" in n or "lora_embedding_B" in n]
    assert lora_B and all(n in ours[2][0] or n in ours[1][0] for n in lora_B)  # B: the fast group (or embedding)
    assert ours[2][1] == ours[3][1] == 16 * ours[0][1] == 16 * 2e-4


def test_groups_cover_exactly_the_trainable_parameters(tiny):
    model = tiny.bert()
    ml.inject_lora(model, ml.LoRAConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"],
                                        bias="all"))
    groups = loraplus_groups(model)
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert any(n.endswith("LayerNorm.bias") for n in groups["groupB_no_decay"])  # 1-D, no decay
    assert "classifier.modules_to_save.default.weight" in groups["groupA"]


def test_a_step_moves_b_faster(tiny):
    """With equal gradients, Adam's first step moves each weight by about its learning rate: B by 16x A's."""
    model = tiny.llama()
    ml.inject_lora(model, ml.LoRAConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    opt = create_loraplus_optimizer(model, torch.optim.Adam, lr=1e-3, loraplus_lr_ratio=16)
    layer = model.model.layers[0].self_attn.q_proj
    A, B = (t.detach().clone() for t in layer.factors())
    model(input_ids=tiny.IDS).logits.square().mean().backward()
    opt.step()
    dA, dB = (t.detach() - t0 for t, t0 in zip(layer.factors(), (A, B)))
    assert dA.abs().max() == pytest.approx(1e-3, rel=0.01) and dB.abs().max() == pytest.approx(16e-3, rel=0.01)


@pytest.mark.parametrize("kw, error, fragment", [
    (dict(lr=1e-3, loraplus_lr_ratio=0), ValueError, "loraplus_lr_ratio must be a number > 0, got 0. It is lr_B"),
    (dict(lr=1e-3, loraplus_lr_ratio=-2.0), ValueError, "got -2.0"),
    (dict(lr=0, loraplus_lr_ratio=16), ValueError, "lr must be a number > 0"),
    (dict(lr=1e-3, loraplus_lr_ratio=16, loraplus_lr_embedding=0),
     ValueError, r"loraplus_lr_embedding must be a number > 0, got 0\."),
    (dict(lr=1e-3, loraplus_lr_ratio=16, loraplus_weight_decay=-0.1), ValueError, "loraplus_weight_decay must be"),
    (dict(lr=1e-3, loraplus_lr_ratio=16, weight_decay=0.1), ValueError, "pass loraplus_weight_decay=... instead"),
    (dict(lr="1e-3", loraplus_lr_ratio=16), TypeError, r"lr must be a number > 0, got '1e-3' \(str\)"),
    (dict(lr=1e-3, loraplus_lr_ratio=True), TypeError, r"loraplus_lr_ratio must be a number > 0, got True \(bool\)"),
])
def test_bad_arguments_are_refused(kw, error, fragment, tiny):
    model = tiny.llama()
    ml.inject_lora(model, ml.LoRAConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(error, match=fragment):
        create_loraplus_optimizer(model, torch.optim.AdamW, **kw)


def test_wrong_types_are_type_errors(tiny):
    model = ml.inject_lora(tiny.llama(), ml.LoRAConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(TypeError, match="optimizer_cls must be a torch.optim.Optimizer class"):
        create_loraplus_optimizer(model, torch.optim.AdamW(model.parameters()), lr=1e-3, loraplus_lr_ratio=16)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        create_loraplus_optimizer(model.state_dict(), torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16)


def test_a_model_without_adapters_is_refused(tiny):
    model = tiny.llama().requires_grad_(False)
    with pytest.raises(ValueError, match="inject LoRA first"):
        create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16)
