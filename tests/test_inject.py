"""inject_lora on tiny random-weight BERT, GPT-2 (Conv1D) and Llama, checked against the real PEFT."""
import copy
import dataclasses

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

import minilora as ml
from minilora.embedding import LoRAEmbedding
from minilora.inject import resolve_targets
from minilora.layers import LoRALinear
from minilora.modules_to_save import ModulesToSaveWrapper

ARCHS = {  # architecture -> the layers to adapt
    "bert": ["query", "value"],
    "gpt2": ["c_attn", "c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def copy_from_peft(mine, pm):
    """Copy PEFT's (non-zero) A and B into minilora's layers, matched by module path."""
    sd = pm.state_dict()
    with torch.no_grad():
        for name, layer in ml.lora_layers(mine):
            key = f"base_model.model.{name}"
            if isinstance(layer, LoRALinear):
                layer.lora_A["default"].weight.copy_(sd[f"{key}.lora_A.default.weight"])
                layer.lora_B["default"].weight.copy_(sd[f"{key}.lora_B.default.weight"])
            else:
                layer.lora_embedding_A["default"].copy_(sd[f"{key}.lora_embedding_A.default"])
                layer.lora_embedding_B["default"].copy_(sd[f"{key}.lora_embedding_B.default"])


@pytest.mark.parametrize("arch", ARCHS)
def test_wraps_the_right_modules_and_counts_equal_peft(arch, tiny):
    base, targets = tiny.make[arch](), ARCHS[arch]
    mine = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=8, target_modules=targets))
    pm = tiny.peft(base, targets)
    wrapped = {n for n, _ in ml.lora_layers(mine)}
    peft_wrapped = {n.removeprefix("base_model.model.") for n, m in pm.named_modules()
                    if hasattr(m, "lora_A") and len(m.lora_A)}
    assert wrapped == peft_wrapped and len(wrapped) > 0
    assert ml.get_nb_trainable_parameters(mine) == pm.get_nb_trainable_parameters()
    for name, p in mine.named_parameters():
        assert p.requires_grad == (".lora_A." in name or ".lora_B." in name), name


@pytest.mark.parametrize("arch", ARCHS)
def test_outputs_equal_peft_with_copied_weights(arch, tiny):
    base, targets = tiny.make[arch](), ARCHS[arch]
    mine = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=8, target_modules=targets))
    pm = tiny.peft(base, targets)
    copy_from_peft(mine, pm)
    torch.testing.assert_close(tiny.logits(mine), tiny.logits(pm), atol=1e-5, rtol=0)
    assert (tiny.logits(mine) - tiny.logits(base)).abs().max() > 1e-4  # 10x the tolerance: the adapters act


def test_embedding_adapter_equals_peft(tiny):
    base = tiny.llama()
    targets = ["embed_tokens", "q_proj"]
    mine = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=8, target_modules=targets))
    assert isinstance(mine.model.embed_tokens, LoRAEmbedding)
    pm = tiny.peft(base, targets)
    copy_from_peft(mine, pm)
    assert ml.get_nb_trainable_parameters(mine) == pm.get_nb_trainable_parameters()
    torch.testing.assert_close(tiny.logits(mine), tiny.logits(pm), atol=1e-5, rtol=0)


def test_print_trainable_parameters_matches_peft_format(capsys, tiny):
    base = tiny.bert()
    pm = tiny.peft(base, ["query", "value"])
    pm.print_trainable_parameters()
    expected = capsys.readouterr().out
    config = ml.LoRAConfig(r=4, target_modules=["query", "value"])
    ml.print_trainable_parameters(ml.inject_lora(copy.deepcopy(base), config))
    assert capsys.readouterr().out == expected


def test_regex_and_all_linear_forms(tiny):
    bert = tiny.bert()
    chosen = resolve_targets(bert, ml.LoRAConfig(target_modules=r".*layer\.0\.attention\.self\.(query|value)"))
    assert chosen == ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value"]
    all_lin = resolve_targets(bert, ml.LoRAConfig(target_modules="all-linear"))
    assert "classifier" not in all_lin and "bert.pooler.dense" in all_lin
    assert len(all_lin) == 2 * 6 + 1  # 6 linears per block and the pooler
    llama = resolve_targets(tiny.llama(), ml.LoRAConfig(target_modules="all-linear"))
    assert "lm_head" not in llama and len(llama) == 2 * 7
    gpt2 = resolve_targets(tiny.gpt2(), ml.LoRAConfig(target_modules="all-linear"))
    assert "lm_head" not in gpt2 and len(gpt2) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    excl = resolve_targets(bert, ml.LoRAConfig(target_modules="all-linear", exclude_modules=["pooler.dense"]))
    assert set(all_lin) - set(excl) == {"bert.pooler.dense"}


def test_all_linear_equals_peft_on_llama(tiny):
    base = tiny.llama()
    mine = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    pm = tiny.peft(base, "all-linear")
    assert ml.get_nb_trainable_parameters(mine) == pm.get_nb_trainable_parameters()


def test_no_match_error_lists_candidates(tiny):
    with pytest.raises(ValueError) as e:
        ml.inject_lora(tiny.bert(), ml.LoRAConfig(target_modules=["q_proj"]))
    msg = str(e.value)
    assert "matched nothing" in msg
    for name in ("query", "key", "value", "attention.output.dense", "intermediate.dense"):
        assert name in msg
    assert "fullmatch" not in msg  # a list of names: no regex hint


def test_no_match_regex_explains_fullmatch_and_exclusion(tiny):
    with pytest.raises(ValueError, match=r"matched nothing.*re\.fullmatch.*or pass a list of names"):
        ml.inject_lora(tiny.bert(), ml.LoRAConfig(target_modules=r"query|value"))  # matches no whole name
    with pytest.raises(ValueError, match=r"matched 4 layers, but exclude_modules='.\*self\.\*' excluded every one"):
        ml.inject_lora(tiny.bert(), ml.LoRAConfig(target_modules=["query", "value"], exclude_modules=r".*self.*"))


def test_modules_to_save_trains_a_copy_of_the_head_like_peft(tiny):
    base = tiny.bert()
    mine = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, target_modules=["query", "value"],
                                                             modules_to_save=["classifier"]))
    assert isinstance(mine.classifier, ModulesToSaveWrapper)
    assert all(p.requires_grad for p in mine.classifier.modules_to_save["default"].parameters())
    assert not any(p.requires_grad for p in mine.classifier.original_module.parameters())
    pm = tiny.peft(base, ["query", "value"], modules_to_save=["classifier"])
    assert ml.get_nb_trainable_parameters(mine) == pm.get_nb_trainable_parameters()
    # training changes the copy, not the original; disable_adapter uses the original
    opt = torch.optim.SGD([p for p in mine.parameters() if p.requires_grad], lr=0.5)
    mine(input_ids=tiny.IDS, labels=torch.tensor([0, 2])).loss.backward()
    opt.step()
    torch.testing.assert_close(mine.classifier.original_module.weight, base.classifier.weight)
    assert not torch.equal(mine.classifier.modules_to_save["default"].weight, base.classifier.weight)
    with ml.disable_adapter(mine):
        torch.testing.assert_close(tiny.logits(mine), tiny.logits(base), atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_and_unload_gives_the_same_logits(arch, tiny):
    model, targets = tiny.make[arch](), ARCHS[arch]
    pm = tiny.peft(model, targets)
    ml.inject_lora(model, ml.LoRAConfig(r=4, lora_alpha=8, target_modules=targets))
    copy_from_peft(model, pm)
    before = tiny.logits(model)
    ml.merge_adapter(model)
    torch.testing.assert_close(tiny.logits(model), before, atol=1e-5, rtol=0)
    ml.unmerge_adapter(model)
    plain = ml.merge_and_unload(model)
    assert not list(ml.lora_layers(plain)) and not hasattr(plain, "peft_config")
    assert not any(isinstance(m, (LoRALinear, LoRAEmbedding, ModulesToSaveWrapper)) for m in plain.modules())
    torch.testing.assert_close(tiny.logits(plain), before, atol=1e-5, rtol=0)
    torch.testing.assert_close(tiny.logits(plain), tiny.logits(pm.merge_and_unload()), atol=1e-5, rtol=0)


def test_disable_adapter_gives_the_base_and_restores(tiny):
    base = tiny.llama()
    model = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, target_modules="all-linear"))
    copy_from_peft(model, tiny.peft(base, "all-linear"))
    adapted = tiny.logits(model)
    with ml.disable_adapter(model):
        torch.testing.assert_close(tiny.logits(model), tiny.logits(base), atol=1e-6, rtol=0)
    torch.testing.assert_close(tiny.logits(model), adapted)
    ml.merge_adapter(model)
    with ml.disable_adapter(model):  # also when merged
        torch.testing.assert_close(tiny.logits(model), tiny.logits(base), atol=1e-5, rtol=0)
    torch.testing.assert_close(tiny.logits(model), adapted, atol=1e-5, rtol=0)


def test_bias_modes(tiny):
    def trainable_biases(bias):
        m = ml.inject_lora(tiny.bert(), ml.LoRAConfig(target_modules=["query"], bias=bias))
        return {n for n, p in m.named_parameters() if p.requires_grad and n.endswith("bias")}
    assert trainable_biases("none") == set()
    assert trainable_biases("lora_only") == {f"bert.encoder.layer.{i}.attention.self.query.base_layer.bias"
                                             for i in range(2)}
    assert len(trainable_biases("all")) > 10


@pytest.mark.parametrize("kwargs, error, fragment", [
    (dict(r=0), ValueError, "r must be an integer >= 1"),
    (dict(lora_alpha=0), ValueError, "alpha must be a number > 0"),
    (dict(lora_dropout=1.0), ValueError, "dropout must be"),
    (dict(bias="some"), ValueError, "bias must be one of"),
    (dict(init_lora_weights="xavier"), ValueError, "init_lora_weights must be True"),
    (dict(target_modules=[]), ValueError, "non-empty list"),
    (dict(target_modules="q_proj(("), ValueError, "does not compile"),
    (dict(target_modules=3), TypeError, "list of names"),
    (dict(target_modules="all-linear", exclude_modules="all-linear"), ValueError, "exclude every target"),
])
def test_config_validates(kwargs, error, fragment):
    with pytest.raises(error, match=fragment.replace("(", r"\(")):
        ml.LoRAConfig(**kwargs)


def test_other_bad_calls(tiny):
    with pytest.raises(TypeError, match="LoRAConfig"):
        ml.inject_lora(tiny.bert(), LoraConfig(target_modules=["query"]))
    with pytest.raises(ValueError, match="modules_to_save"):
        ml.inject_lora(tiny.bert(), ml.LoRAConfig(target_modules=["query"], modules_to_save=["head"]))
    model = ml.inject_lora(tiny.bert(), ml.LoRAConfig(target_modules=["query"]))
    with pytest.raises(ValueError, match="already has an adapter"):
        ml.inject_lora(model, ml.LoRAConfig(target_modules=["query"]))
    with pytest.raises(ValueError, match="inject_lora"):
        ml.merge_adapter(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="no default"):
        ml.inject_lora(nn.Sequential(nn.Linear(2, 2)), ml.LoRAConfig())


def test_default_targets_are_query_and_value(tiny):
    model = ml.inject_lora(tiny.bert(), ml.LoRAConfig())
    assert {n.rsplit(".", 1)[-1] for n, _ in ml.lora_layers(model)} == {"query", "value"}


def test_qlora_order_quantize_then_inject(tiny):
    from minilora.qlora import LinearNF4, quantize_model_nf4

    model = tiny.llama()
    n_base = ml.counting.count_parameters(model)
    quantize_model_nf4(model)
    ml.inject_lora(model, ml.LoRAConfig(r=4, target_modules=["q_proj", "v_proj"]))
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, LoRALinear) and isinstance(q.base_layer, LinearNF4)
    assert q.lora_A["default"].weight.dtype == torch.float32 and q.lora_A["default"].weight.requires_grad
    n_lora = 2 * (4 * (32 + 32) + 4 * (32 + 16))  # 2 layers; q: 32->32, v: 32->16 (2 kv heads of 8)
    assert ml.get_nb_trainable_parameters(model) == (n_lora, n_base + n_lora)
    with pytest.raises(ValueError, match="quantized"):
        ml.merge_adapter(model)


# ----- peft.LoraConfig(**config.to_dict()) builds the same model ------------------------------------
PEFT_KWARGS_CASES = {  # between them, every field of LoRAConfig, each away from its default somewhere
    "defaults": ("llama", dict()),
    "rank-alpha-dropout": ("bert", dict(r=6, lora_alpha=3, lora_dropout=0.1, target_modules=["key", "value"])),
    "regex-exclude": ("llama", dict(r=2, target_modules=r".*\.(q|v|up)_proj",
                                    exclude_modules=["layers.0.mlp.up_proj"])),
    "all-linear-rslora": ("llama", dict(r=4, lora_alpha=16, target_modules="all-linear", use_rslora=True)),
    "head-and-biases": ("bert", dict(target_modules=["value"], modules_to_save=["classifier"], bias="all")),
    "lora-only-biases": ("bert", dict(target_modules=["query", "value"], bias="lora_only")),
    "gaussian-init": ("gpt2", dict(target_modules=["c_attn"], init_lora_weights="gaussian")),
    "random-init": ("bert", dict(target_modules=["dense"], exclude_modules=r".*pooler.*", init_lora_weights=False)),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", PEFT_KWARGS_CASES)
def test_peft_lora_config_from_to_dict_builds_the_same_model(case, tiny):
    from peft import LoraConfig

    arch, kwargs = PEFT_KWARGS_CASES[case]
    base = tiny.make[arch]()
    config = ml.LoRAConfig(**kwargs)
    assert config.to_dict().keys() == {f.name for f in dataclasses.fields(ml.LoRAConfig)}
    mine = ml.inject_lora(copy.deepcopy(base), config)
    theirs = tiny.as_if_trained(get_peft_model(copy.deepcopy(base), LoraConfig(**config.to_dict())))
    assert ml.get_nb_trainable_parameters(mine) == theirs.get_nb_trainable_parameters()
    trainable = {n for n, p in mine.named_parameters() if p.requires_grad}
    assert trainable == {n.removeprefix("base_model.model.") for n, p in theirs.named_parameters() if p.requires_grad}
    # the same tensors under the same names: PEFT's whole state dict loads strictly into minilora's model
    mine.load_state_dict({k.removeprefix("base_model.model."): v for k, v in theirs.state_dict().items()})
    mine.eval(), theirs.eval()
    torch.testing.assert_close(tiny.logits(mine), tiny.logits(theirs), atol=1e-5, rtol=0)
    assert (tiny.logits(mine) - tiny.logits(base)).abs().max() > 1e-4  # 10x the tolerance: the adapter acts
