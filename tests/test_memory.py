"""Training-memory arithmetic (minilora.memory): exact counts for Llama-2, NF4 sizes, computed against measured."""
import pytest
import torch
from transformers import BertConfig, BertModel

from minilora.config import LoRAConfig
from minilora.counting import count_parameters, llama2_config, lora_count, model_nbytes
from minilora.layers import LoRALinear
from minilora.memory import ActivationEstimate, activation_memory_estimate, memory_table, training_memory, weight_bytes
from minilora.qlora import quantize_model_nf4

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
P7, P70 = 6_738_415_616, 68_976_648_192


@pytest.fixture(scope="module")
def cfg7():
    return llama2_config("7b")


@pytest.fixture(scope="module")
def cfg70():
    return llama2_config("70b")


def test_llama2_count_parameters(cfg7, cfg70):
    assert count_parameters(cfg7) == P7
    assert count_parameters(cfg70) == P70
    assert count_parameters(llama2_config("13b")) == 13_015_864_320
    with pytest.raises(ValueError):
        llama2_config("8b")
    with pytest.raises(TypeError, match="size must be one of"):
        llama2_config(7)
    with pytest.raises(TypeError):
        count_parameters("llama")


def test_full_finetune_is_16_bytes_per_parameter(cfg7):
    m = training_memory(cfg7, "all", torch.bfloat16)
    assert m.total == 16 * P7 == 107_814_649_856
    assert (m.weights, m.gradients, m.master, m.optimizer) == (2 * P7, 2 * P7, 4 * P7, 8 * P7)
    fp32 = training_memory(cfg7, "all", "fp32")
    assert fp32.total == 16 * P7 and fp32.master == 0 and fp32.weights == 4 * P7
    no_master = training_memory(cfg7, "all", "bf16", master_weights=False)
    assert no_master.total == 12 * P7
    sgd = training_memory(cfg7, "all", torch.float32, optimizer="sgd")
    assert sgd.total == 8 * P7 and sgd.optimizer == 0


def lora_trainable(model_or_config, r, targets):
    return lora_count(model_or_config, LoRAConfig(r=r, target_modules=targets))[0]


def test_lora_trainable_counts(cfg7, cfg70):
    assert lora_trainable(cfg7, 8, ["q_proj", "v_proj"]) == 4_194_304
    assert [lora_trainable(cfg70, r, SEVEN) for r in (8, 16, 64)] == [103_546_880, 207_093_760, 828_375_040]
    assert lora_trainable(cfg70, 8, "all-linear") == 103_546_880
    assert lora_trainable(cfg70, 8, r".*\.(q|v)_proj") == 80 * 8 * (8192 + 8192 + 8192 + 1024)
    with pytest.raises(ValueError, match="q_proj, k_proj"):
        lora_trainable(cfg7, 8, ["query"])
    with pytest.raises(ValueError):
        lora_trainable(cfg7, 0, ["q_proj"])


def test_lora_config_as_trainable(tiny, cfg7):
    t = lora_trainable(cfg7, 16, SEVEN)
    assert training_memory(cfg7, LoRAConfig(r=16, target_modules=SEVEN)).total == 2 * P7 + 16 * t
    assert training_memory(cfg7, LoRAConfig(r=8)).n_trainable == 4_194_304  # Llama default: q_proj, v_proj
    cfg, model = _tiny_llama(tiny)
    quantize_model_nf4(model)  # QLoRA's order: an NF4 base, then the adapter; NF4 layers count like any linear
    assert training_memory(model, LoRAConfig(r=2, target_modules=["q_proj"]), "nf4-dq").n_trainable == 2 * 2 * (40 + 40)


def test_lora_memory_16_bytes_per_trainable(cfg7):
    t = lora_trainable(cfg7, 16, SEVEN)
    m = training_memory(cfg7, t, torch.bfloat16)
    assert m.n_trainable == t and m.n_params == P7
    assert (m.weights, m.gradients, m.optimizer, m.master) == (2 * P7 + 4 * t, 4 * t, 8 * t, 0)
    assert m.total == 2 * P7 + 16 * t
    assert training_memory(cfg7, t, "bf16", adapter_dtype="bf16").master == 4 * t  # bf16 adapters: fp32 master


def test_nf4_weight_bytes_llama7b(cfg7):
    linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)  # quantized: the 7 projections of each block
    other = P7 - linear  # embeddings, LM head, norms: bf16
    assert linear == 6_476_005_376
    assert weight_bytes(cfg7, "nf4") == linear * 4.5 / 8 + 2 * other == 4_167_573_504
    blocks = {4096 * 4096: 262_144, 4096 * 11008: 704_512}
    dq = 32 * sum(k * (b + 4 * -(-b // 256) + 4) for k, b in ((4, blocks[4096 * 4096]), (3, blocks[4096 * 11008])))
    assert weight_bytes(cfg7, "nf4-dq") == linear // 2 + dq + 2 * other == 3_865_592_704
    assert 8 * (weight_bytes(cfg7, "nf4-dq") - 2 * other) / linear == pytest.approx(4.127, abs=1e-3)
    t = lora_trainable(cfg7, 8, SEVEN)
    q = training_memory(cfg7, t, "nf4-dq")
    assert q.total == 3_865_592_704 + 16 * t
    with pytest.raises(ValueError, match="adapter"):
        training_memory(cfg7, "all", "nf4")


@pytest.mark.parametrize("kw, error, fragment", [
    (dict(trainable="some"), ValueError, "trainable must be 'all', a LoRAConfig or a number"),
    (dict(trainable=-1), ValueError, "got -1"),
    (dict(trainable=True), TypeError, r"got True \(bool\)"),
    (dict(trainable=1.5), TypeError, r"got 1.5 \(float\)"),
    (dict(optimizer="lion"), ValueError, "optimizer must be one of"),
    (dict(optimizer=None), TypeError, "optimizer must be one of"),
    (dict(master_weights=1), TypeError, "master_weights must be True or False"),
    (dict(weight_dtype=torch.int8), ValueError, "a float torch.dtype"),
    (dict(weight_dtype="int4"), ValueError, "a float torch.dtype"),
    (dict(weight_dtype=16), TypeError, r"got 16 \(int\)"),
    (dict(trainable=10, adapter_dtype="nf4"), ValueError, "not in NF4"),
    (dict(trainable=10, blocksize=63), ValueError, "blocksize must be an even integer"),
    (dict(trainable=10, blocksize="64"), TypeError, "blocksize must be an integer"),
])
def test_bad_arguments(cfg7, kw, error, fragment):
    with pytest.raises(error, match=fragment):
        training_memory(cfg7, **kw)


def _tiny_llama(tiny, dtype=torch.float32):
    # hidden 40, kv 2 x 10: k_proj has 800 weights, not a multiple of 64
    model = tiny.llama(vocab_size=97, hidden_size=40, intermediate_size=72, tie_word_embeddings=False)
    return model.config, model.to(dtype)


def _param_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_measured_weights_equal_computed(tiny, dtype):
    cfg, model = _tiny_llama(tiny, dtype)
    assert count_parameters(model) == count_parameters(cfg) == sum(p.numel() for p in model.parameters())
    assert _param_bytes(model) == weight_bytes(cfg, dtype) == training_memory(model, "all", dtype).weights
    assert model_nbytes(model) == _param_bytes(model) + sum(b.numel() * b.element_size() for b in model.buffers())


def test_measured_nf4_equals_computed(tiny):
    cfg, model = _tiny_llama(tiny, torch.bfloat16)
    extra = sum(b.numel() * b.element_size() for b in model.buffers())  # rotary tables: not weights
    quantize_model_nf4(model, double_quant=True)
    assert model_nbytes(model) - extra == weight_bytes(cfg, "nf4-dq")
    assert count_parameters(model) == count_parameters(cfg)
    cfg2, model2 = _tiny_llama(tiny, torch.bfloat16)
    quantize_model_nf4(model2, double_quant=False)
    assert model_nbytes(model2) - extra == weight_bytes(cfg2, "nf4")


def test_lora_model_counts(tiny):
    cfg, model = _tiny_llama(tiny)
    for layer in model.model.layers:
        layer.mlp.up_proj = LoRALinear(layer.mlp.up_proj, r=3, lora_alpha=3)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora_trainable(cfg, 3, ["up_proj"]) == lora == 2 * 3 * (40 + 72)
    with pytest.raises(ValueError, match="already has LoRA layers; count on the base model"):
        lora_trainable(model, 3, ["up_proj"])
    assert count_parameters(model) == count_parameters(cfg) + lora  # every parameter, as PEFT counts
    m = training_memory(model, lora, torch.float32)
    assert m.weights == _param_bytes(model) and m.total == 4 * count_parameters(cfg) + 16 * lora


def test_encoder_config():
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     vocab_size=50, architectures=["BertModel"])  # as a pretrained encoder's config.json says
    torch.manual_seed(0)
    assert count_parameters(cfg) == sum(p.numel() for p in BertModel(cfg).parameters())


def test_str_and_table(cfg7):
    full = training_memory(cfg7, "all", label="full FT")
    lora = training_memory(cfg7, lora_trainable(cfg7, 8, SEVEN), label="LoRA r=8")
    text = str(full)
    assert "full FT" in text and "107.81 GB" in text and "53.91 GB" in text and "activations not included" in text
    table = memory_table([full, lora])
    assert "full FT" in table and "LoRA r=8" in table and "master weights" in table and "107.81" in table
    act = activation_memory_estimate(cfg7, 1, 512)
    with_act = training_memory(cfg7, "all", activations=act)
    assert with_act.total == full.total + act.total and "activations" in str(with_act)


def test_activation_estimate(cfg7):
    s, b, h, a, L = 2048, 2, 4096, 32, 32
    est = activation_memory_estimate(cfg7, b, s)
    assert isinstance(est, ActivationEstimate)
    assert est.per_layer == s * b * h * (34 + 5 * a * s / h)
    assert est.total == L * est.per_layer + 4 * b * s * 32000
    ckpt = activation_memory_estimate(cfg7, b, s, checkpointing=True)
    assert ckpt.stored == L * 2 * s * b * h + est.per_layer and ckpt.total < est.total / 10
    flash = activation_memory_estimate(cfg7, b, s, flash_attention=True)
    assert flash.per_layer == 34 * s * b * h
    assert activation_memory_estimate(cfg7, b, s, dtype=torch.float32).per_layer == 2 * est.per_layer
    assert "estimate" in str(est)
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        activation_memory_estimate(cfg7, 0, s)
    with pytest.raises(TypeError, match="seq_len must be an integer"):
        activation_memory_estimate(cfg7, 1, 512.0)
    with pytest.raises(TypeError, match="checkpointing must be True or False"):
        activation_memory_estimate(cfg7, 1, s, checkpointing="yes")
    with pytest.raises(ValueError):
        activation_memory_estimate(object(), 1, s)
