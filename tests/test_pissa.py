"""PiSSA (init_lora_weights="pissa" / "pissa_niter_K", minilora.pissa) against PEFT's: the initial A, B and
residual base, an unchanged model at step 0, and the conversion to a plain LoRA that works on an untouched base."""
import copy
import json
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

import minilora as ml
from minilora.counting import get_nb_trainable_parameters, lora_count
from minilora.io import AdapterFileError, load_adapter, save_adapter
from minilora.layers import LoRALinear
from minilora.pissa import pissa_factors
from minilora.qlora import quantize_model_nf4

TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn", "c_proj"], "llama": ["q_proj", "v_proj", "down_proj"]}


def both(tiny, arch, init, seed=5, **kw):
    """(base, PEFT's PiSSA model, minilora's), each initialised after torch.manual_seed(seed)."""
    base = tiny.make[arch]()
    torch.manual_seed(seed)
    peft = tiny.peft(base, TARGETS[arch], init_lora_weights=init, **kw)
    torch.manual_seed(seed)
    mine = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=8, target_modules=TARGETS[arch],
                                                             init_lora_weights=init, **kw))
    return base, peft, mine


def peft_names(peft):
    return {k.removeprefix("base_model.model."): v for k, v in peft.state_dict().items()}


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_2"])
@pytest.mark.parametrize("arch", TARGETS)
def test_initial_adapter_and_residual_equal_peft(arch, init, tiny):
    base, peft, mine = both(tiny, arch, init)
    theirs = peft_names(peft)
    ours = mine.state_dict()
    assert set(ours) == set(theirs)
    for k in ours:  # A, B and every (residual) base weight: the same operations, the same seeded draws
        assert torch.equal(ours[k], theirs[k]), k
    assert get_nb_trainable_parameters(mine) == peft.get_nb_trainable_parameters()
    torch.testing.assert_close(tiny.logits(mine), tiny.logits(base), atol=1e-5, rtol=0)  # unchanged at step 0


@pytest.mark.parametrize("fan_in_fan_out", [False, True])
def test_factors_are_the_top_r_singular_directions(fan_in_fan_out):
    torch.manual_seed(0)
    W = torch.randn(7, 5)  # (out, in)
    stored = W.T.contiguous() if fan_in_fan_out else W
    A, B, residual = pissa_factors(stored, r=3, scaling=0.5, init_lora_weights="pissa", fan_in_fan_out=fan_in_fan_out)
    assert A.shape == (3, 5) and B.shape == (7, 3) and residual.shape == stored.shape
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    torch.testing.assert_close(0.5 * B @ A, U[:, :3] @ torch.diag(S[:3]) @ Vh[:3], atol=1e-5, rtol=0)
    torch.testing.assert_close(residual + (0.5 * B @ A).T if fan_in_fan_out else residual + 0.5 * B @ A, stored,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.svdvals(residual)[:2], S[3:5], atol=1e-5, rtol=0)  # what is left
    torch.testing.assert_close(A @ A.T, B.T @ B, atol=1e-5, rtol=0)  # sqrt(S/s) split evenly: A A^T = B^T B


def test_fp16_base_keeps_its_dtype_and_factors_are_float32():
    layer = LoRALinear(nn.Linear(8, 6).half(), r=2, lora_alpha=4, init_lora_weights="pissa")
    assert layer.base_layer.weight.dtype == torch.float16
    assert layer.lora_A["default"].weight.dtype == layer.lora_B["default"].weight.dtype == torch.float32


def test_rslora_and_dora_start_from_the_same_model_as_peft(tiny):
    base, peft, mine = both(tiny, "llama", "pissa", use_rslora=True, use_dora=True)
    for k, v in mine.state_dict().items():
        torch.testing.assert_close(v, peft_names(peft)[k], atol=1e-6, rtol=0)
    torch.testing.assert_close(tiny.logits(mine), tiny.logits(base), atol=1e-5, rtol=0)


# BERT's head is trained too: the converted file keeps it (PEFT's conversion would drop it)
CONVERT = [("bert", {"modules_to_save": ["classifier"]}), ("gpt2", {}), ("llama", {}),
           ("llama", {"use_rslora": True}), ("gpt2", {"use_dora": True})]


@pytest.mark.parametrize("arch, kw", CONVERT)
def test_converted_file_gives_the_trained_model_on_an_untouched_base(arch, kw, tiny, tmp_path):
    base, _, mine = both(tiny, arch, "pissa", **kw)
    save_adapter(mine, tmp_path / "init")  # right after initialisation
    tiny.as_if_trained(mine)
    trained = tiny.logits(mine)
    assert (trained - tiny.logits(base)).abs().max() > 1e-4  # 10 times the tolerance below
    save_adapter(mine, tmp_path / "lora", path_initial_model_for_weight_conversion=tmp_path / "init")
    cfg = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["init_lora_weights"] is True
    assert cfg["lora_alpha"] == (8 * 2 ** 0.5 if kw.get("use_rslora") else 16)  # the scaling stays
    assert json.loads((tmp_path / "init" / "adapter_config.json").read_text())["init_lora_weights"] == "pissa"
    ours = load_adapter(copy.deepcopy(base), tmp_path / "lora")
    torch.testing.assert_close(tiny.logits(ours), trained, atol=1e-5, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "lora").eval()
    torch.testing.assert_close(tiny.logits(theirs), trained, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore:PiSSA changes the base weights")
@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_conversion_writes_what_peft_writes(arch, tiny, tmp_path):
    _, peft, mine = both(tiny, arch, "pissa")
    peft.save_pretrained(tmp_path / "peft_init")
    tiny.as_if_trained(peft)
    mine.load_state_dict(peft_names(peft))
    peft.save_pretrained(tmp_path / "peft", path_initial_model_for_weight_conversion=str(tmp_path / "peft_init"))
    # minilora converts against PEFT's initial folder (which PEFT rewrote with init_lora_weights True)
    save_adapter(mine, tmp_path / "mine", path_initial_model_for_weight_conversion=tmp_path / "peft_init")
    theirs, ours = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("peft", "mine"))
    assert set(ours) == set(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    a, b = (json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("peft", "mine"))
    assert {k: b[k] for k in ("r", "lora_alpha", "init_lora_weights", "use_rslora")} == \
        {k: a[k] for k in ("r", "lora_alpha", "init_lora_weights", "use_rslora")}


def test_count_on_the_meta_device(tiny):
    base = tiny.llama()
    config = ml.LoRAConfig(r=4, lora_alpha=8, target_modules=TARGETS["llama"], init_lora_weights="pissa_niter_1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft = get_peft_model(copy.deepcopy(base), LoraConfig(**config.to_dict()))
    assert lora_count(base, config) == peft.get_nb_trainable_parameters()


def test_bad_inputs_are_refused(tiny):
    with pytest.raises(ValueError, match="'pissa' or 'pissa_niter_K'"):
        ml.LoRAConfig(init_lora_weights="pissa_niter_x")
    with pytest.warns(UserWarning, match="no longer low rank"), \
            pytest.raises(ValueError, match=r"only min\(8, 6\) = 6; choose r <= 6"):
        LoRALinear(nn.Linear(8, 6), r=7, init_lora_weights="pissa")
    with pytest.raises(TypeError, match="float32, float16 or bfloat16.*model.float"):
        LoRALinear(nn.Linear(8, 6).double(), r=2, init_lora_weights="pissa")
    model = tiny.llama()
    with pytest.raises(ValueError, match="an embedding: PiSSA starts from the SVD of a linear weight"):
        ml.inject_lora(model, ml.LoRAConfig(target_modules=["embed_tokens", "q_proj"], init_lora_weights="pissa"))
    assert not list(ml.lora_layers(model))  # refused before anything changed
    quantize_model_nf4(model)
    with pytest.raises(ValueError, match="quantized.*then quantize the residual"):
        ml.inject_lora(model, ml.LoRAConfig(target_modules=["q_proj"], init_lora_weights="pissa"))


def test_bad_conversions_are_refused(tiny, tmp_path):
    base, _, mine = both(tiny, "bert", "pissa")
    save_adapter(mine, tmp_path / "init")
    with pytest.raises(AdapterFileError, match="changes the base weights.*path_initial_model_for_weight_conversion"):
        load_adapter(copy.deepcopy(base), tmp_path / "init")  # a PiSSA file as it is needs the residual base
    with pytest.raises(ValueError, match="so that the initial copy is not overwritten"):
        save_adapter(mine, tmp_path / "init", path_initial_model_for_weight_conversion=tmp_path / "init")
    with pytest.raises(AdapterFileError, match="right after inject_lora"):
        save_adapter(mine, tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "nowhere")
    other = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=2, lora_alpha=8, target_modules=TARGETS["bert"],
                                                              init_lora_weights="pissa"))
    with pytest.raises(AdapterFileError, match="holds another adapter \\(r: initial 4, now 2"):
        save_adapter(other, tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "init")
    plain = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=8, target_modules=TARGETS["bert"]))
    with pytest.raises(ValueError, match="left the base as it was: save it without"):
        save_adapter(plain, tmp_path / "out", path_initial_model_for_weight_conversion=tmp_path / "init")
    assert not (tmp_path / "out").exists()


def test_a_pissa_adapter_beside_another_warns(tiny):
    model = ml.inject_lora(tiny.bert(), ml.LoRAConfig(target_modules=["query"]))
    with pytest.warns(UserWarning, match=r"other adapters \['default'\] no longer compute"):
        ml.add_adapter(model, "p", ml.LoRAConfig(target_modules=["query"], init_lora_weights="pissa"))
