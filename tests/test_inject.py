"""inject_lora on tiny random-weight BERT, GPT-2 (Conv1D) and Llama, checked against the real PEFT."""
import copy
import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel,
                          LlamaConfig, LlamaForCausalLM)

import minilora as ml
import minilora.counting
from minilora.inject import ModulesToSave, resolve_targets
from minilora.layers import LoRAEmbedding, LoRALinear


def tiny_bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


ARCHS = {
    "bert": (tiny_bert, ["query", "value"]),
    "gpt2": (tiny_gpt2, ["c_attn", "c_proj"]),
    "llama": (tiny_llama, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
}
IDS = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(1))


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def peft_model(base, targets, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that it switches fan_in_fan_out on for Conv1D
        return get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                              init_lora_weights=False, **kw))


def copy_from_peft(mine, pm):
    """Copy PEFT's (non-zero) A and B into minilora's layers, matched by module path."""
    sd = pm.state_dict()
    with torch.no_grad():
        for name, layer in ml.lora_layers(mine):
            key = f"base_model.model.{name}"
            if isinstance(layer, LoRALinear):
                layer.lora_A["default"].copy_(sd[f"{key}.lora_A.default.weight"])
                layer.lora_B["default"].copy_(sd[f"{key}.lora_B.default.weight"])
            else:
                layer.lora_embedding_A["default"].copy_(sd[f"{key}.lora_embedding_A.default"])
                layer.lora_embedding_B["default"].copy_(sd[f"{key}.lora_embedding_B.default"])


@pytest.mark.parametrize("arch", ARCHS)
def test_wraps_the_right_modules_and_counts_equal_peft(arch):
    make, targets = ARCHS[arch]
    base = make()
    mine = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, alpha=8, target_modules=targets))
    pm = peft_model(base, targets)
    wrapped = {n for n, _ in ml.lora_layers(mine)}
    peft_wrapped = {n.removeprefix("base_model.model.") for n, m in pm.named_modules()
                    if hasattr(m, "lora_A") and len(m.lora_A)}
    assert wrapped == peft_wrapped and len(wrapped) > 0
    assert ml.trainable_parameters(mine) == pm.get_nb_trainable_parameters()
    for name, p in mine.named_parameters():
        assert p.requires_grad == (".lora_A." in name or ".lora_B." in name), name


@pytest.mark.parametrize("arch", ARCHS)
def test_outputs_equal_peft_with_copied_weights(arch):
    make, targets = ARCHS[arch]
    base = make()
    mine = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, alpha=8, target_modules=targets))
    pm = peft_model(base, targets)
    copy_from_peft(mine, pm)
    torch.testing.assert_close(logits(mine), logits(pm), atol=1e-5, rtol=0)
    assert (logits(mine) - logits(base)).abs().max() > 1e-4  # 10x the tolerance: the adapters act


def test_embedding_adapter_equals_peft():
    base = tiny_llama()
    targets = ["embed_tokens", "q_proj"]
    mine = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, alpha=8, target_modules=targets))
    assert isinstance(mine.model.embed_tokens, LoRAEmbedding)
    pm = peft_model(base, targets)
    copy_from_peft(mine, pm)
    assert ml.trainable_parameters(mine) == pm.get_nb_trainable_parameters()
    torch.testing.assert_close(logits(mine), logits(pm), atol=1e-5, rtol=0)


def test_print_trainable_parameters_matches_peft_format(capsys):
    base = tiny_bert()
    pm = peft_model(base, ["query", "value"])
    pm.print_trainable_parameters()
    expected = capsys.readouterr().out
    ml.print_trainable_parameters(ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, target_modules=["query", "value"])))
    assert capsys.readouterr().out == expected


def test_regex_and_all_linear_forms():
    bert = tiny_bert()
    chosen = resolve_targets(bert, ml.LoRAConfig(target_modules=r".*layer\.0\.attention\.self\.(query|value)"))
    assert chosen == ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.value"]
    all_lin = resolve_targets(bert, ml.LoRAConfig(target_modules="all-linear"))
    assert "classifier" not in all_lin and "bert.pooler.dense" in all_lin
    assert len(all_lin) == 2 * 6 + 1  # 6 linears per block and the pooler
    llama = resolve_targets(tiny_llama(), ml.LoRAConfig(target_modules="all-linear"))
    assert "lm_head" not in llama and len(llama) == 2 * 7
    gpt2 = resolve_targets(tiny_gpt2(), ml.LoRAConfig(target_modules="all-linear"))
    assert "lm_head" not in gpt2 and len(gpt2) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    excl = resolve_targets(bert, ml.LoRAConfig(target_modules="all-linear", exclude_modules=["pooler.dense"]))
    assert set(all_lin) - set(excl) == {"bert.pooler.dense"}


def test_all_linear_equals_peft_on_llama():
    base = tiny_llama()
    mine = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, alpha=8, target_modules="all-linear"))
    pm = peft_model(base, "all-linear")
    assert ml.trainable_parameters(mine) == pm.get_nb_trainable_parameters()


def test_no_match_error_lists_candidates():
    with pytest.raises(ValueError) as e:
        ml.inject_lora(tiny_bert(), ml.LoRAConfig(target_modules=["q_proj"]))
    msg = str(e.value)
    assert "matched nothing" in msg
    for name in ("query", "key", "value", "attention.output.dense", "intermediate.dense"):
        assert name in msg
    assert "fullmatch" not in msg  # a list of names: no regex hint


def test_no_match_regex_explains_fullmatch_and_exclusion():
    with pytest.raises(ValueError, match=r"matched nothing.*re\.fullmatch.*or pass a list of names"):
        ml.inject_lora(tiny_bert(), ml.LoRAConfig(target_modules=r"query|value"))  # matches no whole name
    with pytest.raises(ValueError, match=r"matched 4 layers, but exclude_modules='.\*self\.\*' excluded every one"):
        ml.inject_lora(tiny_bert(), ml.LoRAConfig(target_modules=["query", "value"], exclude_modules=r".*self.*"))


def test_modules_to_save_trains_a_copy_of_the_head_like_peft():
    base = tiny_bert()
    mine = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, target_modules=["query", "value"],
                                                             modules_to_save=["classifier"]))
    assert isinstance(mine.classifier, ModulesToSave)
    assert all(p.requires_grad for p in mine.classifier.modules_to_save["default"].parameters())
    assert not any(p.requires_grad for p in mine.classifier.original_module.parameters())
    pm = peft_model(base, ["query", "value"], modules_to_save=["classifier"])
    assert ml.trainable_parameters(mine) == pm.get_nb_trainable_parameters()
    # training changes the copy, not the original; disable_lora uses the original
    opt = torch.optim.SGD([p for p in mine.parameters() if p.requires_grad], lr=0.5)
    mine(input_ids=IDS, labels=torch.tensor([0, 2])).loss.backward()
    opt.step()
    torch.testing.assert_close(mine.classifier.original_module.weight, base.classifier.weight)
    assert not torch.equal(mine.classifier.modules_to_save["default"].weight, base.classifier.weight)
    with ml.disable_lora(mine):
        torch.testing.assert_close(logits(mine), logits(base), atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_and_unload_gives_the_same_logits(arch):
    make, targets = ARCHS[arch]
    model = make()
    pm = peft_model(model, targets)
    ml.inject_lora(model, ml.LoRAConfig(r=4, alpha=8, target_modules=targets))
    copy_from_peft(model, pm)
    before = logits(model)
    ml.merge(model)
    torch.testing.assert_close(logits(model), before, atol=1e-5, rtol=0)
    ml.unmerge(model)
    plain = ml.merge_and_unload(model)
    assert not list(ml.lora_layers(plain)) and not hasattr(plain, "lora_configs")
    assert not any(isinstance(m, (LoRALinear, LoRAEmbedding, ModulesToSave)) for m in plain.modules())
    torch.testing.assert_close(logits(plain), before, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(plain), logits(pm.merge_and_unload()), atol=1e-5, rtol=0)


def test_disable_lora_gives_the_base_and_restores():
    base = tiny_llama()
    model = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, target_modules="all-linear"))
    copy_from_peft(model, peft_model(base, "all-linear"))
    adapted = logits(model)
    with ml.disable_lora(model):
        torch.testing.assert_close(logits(model), logits(base), atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(model), adapted)
    ml.merge(model)
    with ml.disable_lora(model):  # also when merged
        torch.testing.assert_close(logits(model), logits(base), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(model), adapted, atol=1e-5, rtol=0)


def test_bias_modes():
    def trainable_biases(bias):
        m = ml.inject_lora(tiny_bert(), ml.LoRAConfig(target_modules=["query"], bias=bias))
        return {n for n, p in m.named_parameters() if p.requires_grad and n.endswith("bias")}
    assert trainable_biases("none") == set()
    assert trainable_biases("lora_only") == {f"bert.encoder.layer.{i}.attention.self.query.base.bias" for i in range(2)}
    assert len(trainable_biases("all")) > 10


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(r=0), "r must be a positive integer"),
    (dict(alpha=0), "alpha must be a positive"),
    (dict(dropout=1.0), "dropout must be"),
    (dict(bias="some"), "bias must be one of"),
    (dict(init="xavier"), "init must be one of"),
    (dict(target_modules=[]), "non-empty list"),
    (dict(target_modules="q_proj(("), "does not compile"),
    (dict(target_modules=3), "list of names"),
    (dict(target_modules="all-linear", exclude_modules="all-linear"), "exclude every target"),
])
def test_config_validates(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(")):
        ml.LoRAConfig(**kwargs)


def test_other_bad_calls():
    with pytest.raises(TypeError, match="LoRAConfig"):
        ml.inject_lora(tiny_bert(), LoraConfig(target_modules=["query"]))
    with pytest.raises(ValueError, match="modules_to_save"):
        ml.inject_lora(tiny_bert(), ml.LoRAConfig(target_modules=["query"], modules_to_save=["head"]))
    model = ml.inject_lora(tiny_bert(), ml.LoRAConfig(target_modules=["query"]))
    with pytest.raises(ValueError, match="already has an adapter"):
        ml.inject_lora(model, ml.LoRAConfig(target_modules=["query"]))
    with pytest.raises(ValueError, match="inject_lora"):
        ml.merge(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="no default"):
        ml.inject_lora(nn.Sequential(nn.Linear(2, 2)), ml.LoRAConfig())


def test_default_targets_are_query_and_value():
    model = ml.inject_lora(tiny_bert(), ml.LoRAConfig())
    assert {n.rsplit(".", 1)[-1] for n, _ in ml.lora_layers(model)} == {"query", "value"}


def test_qlora_order_quantize_then_inject():
    from minilora.quant import LinearNF4, quantize_model_nf4

    model = tiny_llama()
    n_base = ml.counting.count_parameters(model)
    quantize_model_nf4(model)
    ml.inject_lora(model, ml.LoRAConfig(r=4, target_modules=["q_proj", "v_proj"]))
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, LoRALinear) and isinstance(q.base, LinearNF4)
    assert q.lora_A["default"].dtype == torch.float32 and q.lora_A["default"].requires_grad
    n_lora = 2 * (4 * (32 + 32) + 4 * (32 + 16))  # 2 layers; q: 32->32, v: 32->16 (2 kv heads of 8)
    assert ml.trainable_parameters(model) == (n_lora, n_base + n_lora)
    with pytest.raises(RuntimeError, match="quantized"):
        ml.merge(model)
