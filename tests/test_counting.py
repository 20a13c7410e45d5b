"""Exact LoRA parameter counts of real architectures on the meta device, against published figures."""
import pytest
import torch
from torch import nn
from transformers import AutoModel, BertConfig, BertModel, GPT2Config, LlamaConfig, RobertaConfig

from minilora.config import LoRAConfig
from minilora.counting import (
    COMPONENTS,
    block_summary,
    component_counts,
    count_parameters,
    lora_count,
    lora_matrix_count,
    meta_model,
    paper_formula,
)
from minilora.inject import inject_lora, lora_layers

QV = ["q_proj", "v_proj"]


def llama2(size):
    shapes = {"7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32),
              "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                          num_key_value_heads=8)}[size]
    return LlamaConfig(vocab_size=32000, tie_word_embeddings=False, **shapes)


def roberta_base():
    # roberta-base's config.json: RobertaConfig() defaults plus 514 positions and one token type.
    return RobertaConfig(max_position_embeddings=514, type_vocab_size=1)


def test_roberta_base_query_value_r8():
    trainable, total = lora_count(roberta_base(), LoRAConfig(r=8, target_modules=["query", "value"]), AutoModel)
    assert trainable == 294_912  # the LoRA paper's "0.3M" for RoBERTa-base
    assert total == 124_645_632 + 294_912  # roberta-base has 124,645,632 parameters


def test_roberta_defaults_give_the_same_adapter():
    # RobertaConfig() differs from roberta-base only in the embedding tables, which LoRA does not touch.
    trainable, _ = lora_count(RobertaConfig(), LoRAConfig(r=8, target_modules=["query", "value"]), AutoModel)
    assert trainable == 294_912


def test_llama2_7b_query_value_r8():
    trainable, total = lora_count(llama2("7b"), LoRAConfig(r=8, target_modules=QV))
    assert trainable == 4_194_304
    assert total == 6_742_609_920 == 6_738_415_616 + 4_194_304


@pytest.mark.parametrize("r,expected", [(8, 103_546_880), (16, 207_093_760), (64, 828_375_040)])
def test_llama2_70b_all_linear(r, expected):
    trainable, total = lora_count(llama2("70b"), LoRAConfig(r=r, target_modules="all-linear"))
    assert trainable == expected
    assert total == 68_976_648_192 + expected


def test_all_linear_equals_the_seven_projections_by_name():
    seven = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (lora_count(llama2("7b"), LoRAConfig(r=8, target_modules=seven))
            == lora_count(llama2("7b"), LoRAConfig(r=8, target_modules="all-linear")))


def test_gpt3_paper_formula():
    layers, d_model = 96, 12288
    assert paper_formula(layers * 2, d_model, 1) == 4_718_592  # "4.7M": W_q, W_v, r = 1
    assert paper_formula(layers * 2, d_model, 8) == 37_748_736  # "37.7M": W_q, W_v, r = 8
    assert paper_formula(layers, d_model, 8) == 18_874_368  # one matrix type at r = 8: the paper's 18M budget


def test_paper_formula_equals_lora_count_on_square_matrices():
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=100)
    trainable, _ = lora_count(cfg, LoRAConfig(r=4, target_modules=QV))
    assert trainable == paper_formula(3 * 2, 256, 4)


def test_gpt2_conv1d_c_attn_r8():
    trainable, total = lora_count(GPT2Config(), LoRAConfig(r=8, target_modules=["c_attn"]))
    assert trainable == 294_912 == 12 * 8 * (768 + 3 * 768)
    assert total == 124_439_808 + 294_912  # gpt2 (small): 124,439,808 parameters, LM head tied


def test_gpt2_conv1d_adapter_shapes_follow_the_paper_layout():
    model = meta_model(GPT2Config(n_layer=1))
    assert model.transformer.h[0].attn.c_attn.weight.shape == (768, 2304)  # Conv1D stores (in, out)
    inject_lora(model, LoRAConfig(r=8, target_modules=["c_attn"]))
    layer = dict(lora_layers(model))["transformer.h.0.attn.c_attn"]
    assert layer.fan_in_fan_out
    assert layer.lora_A["default"].weight.shape == (8, 768) and layer.lora_B["default"].weight.shape == (2304, 8)


def test_lora_count_matches_a_real_model_with_weights():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    real = inject_lora(BertModel(cfg), LoRAConfig(r=4, target_modules=["query", "value"]))
    trainable = sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert lora_count(cfg, LoRAConfig(r=4, target_modules=["query", "value"]), AutoModel) == (
        trainable, count_parameters(real))
    assert trainable == 2 * 2 * lora_matrix_count(32, 32, 4)


def test_lora_count_leaves_a_real_module_untouched(tiny):
    model = tiny.llama()
    model.model.embed_tokens.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    types = {n: type(m) for n, m in model.named_modules()}
    trainable, total = lora_count(model, LoRAConfig(r=4, target_modules="all-linear"))
    assert trainable == 2 * 4 * (2 * (32 + 32) + 2 * (32 + 16) + 3 * (32 + 64))
    assert total == count_parameters(model) + trainable
    assert not list(lora_layers(model)) and not hasattr(model, "peft_config")
    assert {n: type(m) for n, m in model.named_modules()} == types
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].device.type == "cpu"
        torch.testing.assert_close(after[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("args, error, fragment", [
    ((0, 10, 4), ValueError, "d_in must be an integer >= 1, got 0"),
    ((10, 0, 4), ValueError, "d_out must be an integer >= 1, got 0"),
    ((10, 10, 0), ValueError, "r must be an integer >= 1, got 0"),
    ((-1, 10, 4), ValueError, "d_in must be an integer >= 1, got -1"),
    ((10, 10, -8), ValueError, "r must be an integer >= 1, got -8"),
    ((10.0, 10, 4), TypeError, r"d_in must be an integer >= 1, got 10.0 \(float\)"),
    ((10, 10, 2.5), TypeError, r"r must be an integer >= 1, got 2.5 \(float\)"),
    ((10, 10, True), TypeError, r"r must be an integer >= 1, got True \(bool\)"),
    ((10, 10, 4, 1), TypeError, "use_dora must be True or False"),
])
def test_lora_matrix_count_rejects_non_positive_or_non_integers(args, error, fragment):
    with pytest.raises(error, match=fragment):
        lora_matrix_count(*args)
    if len(args) == 3:
        with pytest.raises(error):
            paper_formula(*args)


def test_lora_matrix_count():
    assert lora_matrix_count(4096, 4096, 8) == 65_536
    assert lora_matrix_count(8192, 1024, 16) == 16 * 9216  # a 70B k_proj (GQA: 8192 -> 1024)


def test_meta_model_has_no_storage():
    model = meta_model(llama2("70b"))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert count_parameters(model) == 68_976_648_192


def test_component_counts_add_up_and_split_as_expected():
    counts = component_counts(meta_model(llama2("7b")))
    assert list(counts) == list(COMPONENTS)
    assert sum(counts.values()) == 6_738_415_616
    assert counts["embeddings"] == counts["head"] == 32000 * 4096
    assert counts["attention"] == 32 * 4 * 4096 * 4096
    assert counts["mlp"] == 32 * 3 * 4096 * 11008
    assert counts["norms"] == (2 * 32 + 1) * 4096


def test_component_counts_bert_gpt2_tied_and_lora():
    bert = component_counts(meta_model(roberta_base(), AutoModel))
    assert bert["pooler"] == 768 * 768 + 768 and bert["head"] == 0  # BertModel: a pooler, no task head
    assert bert["attention"] == 12 * 4 * (768 * 768 + 768)
    assert bert["mlp"] == 12 * (2 * 768 * 3072 + 3072 + 768)
    gpt2 = meta_model(GPT2Config())
    counts = component_counts(gpt2)
    assert counts["head"] == 0  # tied to the token embedding, counted there once
    assert sum(counts.values()) == 124_439_808
    inject_lora(gpt2, LoRAConfig(r=8, target_modules=["c_attn"]))
    with_lora = component_counts(gpt2)
    assert with_lora["lora"] == 294_912 and with_lora["attention"] == counts["attention"]
    with pytest.raises(TypeError, match="meta_model"):
        component_counts(GPT2Config())


def test_block_summary():
    model = meta_model(llama2("7b"))
    text = block_summary(model, -1)
    lines = text.splitlines()
    assert lines[0] == "model.layers.31: one of 32 × LlamaDecoderLayer, 202,383,360 parameters each"
    assert len(lines) == 1 + 9  # seven projections and two norms
    assert "self_attn.k_proj" in lines[2] and "4096 → 4096" in lines[2] and "16,777,216" in lines[2]
    inject_lora(model, LoRAConfig(r=8, target_modules=QV))
    assert "LoRALinear r=8" in block_summary(model).splitlines()[1]
    with pytest.raises(ValueError, match="32 blocks"):
        block_summary(model, 32)
    with pytest.raises(ValueError, match="no list of transformer blocks"):
        block_summary(nn.Linear(3, 3))


@pytest.mark.parametrize("name", ["roberta-base", "gpt2", "llama2-7b"])
def test_counts_equal_peft_on_the_meta_device(name):
    import warnings

    from peft import LoraConfig, get_peft_model

    config, auto_class, targets = {
        "roberta-base": (roberta_base(), AutoModel, ["query", "value"]),
        "gpt2": (GPT2Config(), None, ["c_attn"]),
        "llama2-7b": (llama2("7b"), None, QV),
    }[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that it switches fan_in_fan_out on for Conv1D
        peft = get_peft_model(meta_model(config, auto_class), LoraConfig(r=8, target_modules=targets))
    theirs = (sum(p.numel() for p in peft.parameters() if p.requires_grad), count_parameters(peft))
    assert lora_count(config, LoRAConfig(r=8, target_modules=targets), auto_class) == theirs
