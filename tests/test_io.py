"""save_adapter / load_adapter: PEFT's file format in both directions, and every bad file refused."""
import copy
import json
import logging
import os
import pickle
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification

import minilora as ml
from minilora.adapters import list_adapters, set_adapter
from minilora.errors import UnknownAdapterError
from minilora.files import write_atomic
from minilora.io import (
    AdapterFileError,
    get_peft_model_state_dict,
    load_adapter,
    read_adapter_config,
    save_adapter,
    set_peft_model_state_dict,
)
from minilora.modules_to_save import ModulesToSaveWrapper

CASES = {  # architecture -> (targets, modules_to_save)
    "bert": (["query", "value"], ["classifier"]),
    "gpt2": (["c_attn", "c_proj"], None),
    "llama": (["embed_tokens", "q_proj", "v_proj"], None),
}


def mine(tiny, arch, targets, mts, **kw):
    """(a tiny base model, a copy of it with a minilora adapter as if trained)."""
    base = tiny.make[arch]()
    model = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=8, target_modules=targets,
                                                              modules_to_save=mts, **kw))
    return base, tiny.as_if_trained(model)


def peft_load_quietly(base, directory, caplog):
    """PeftModel.from_pretrained, failing the test on any warning PEFT or transformers emits."""
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        pm = PeftModel.from_pretrained(copy.deepcopy(base), directory)
    assert not [str(w.message) for w in caught]
    assert not [r.getMessage() for r in caplog.records if r.name.startswith(("peft", "transformers.modeling"))]
    return pm.eval()


@pytest.mark.parametrize("arch", CASES)
def test_peft_loads_a_minilora_adapter_with_the_same_outputs(arch, tmp_path, caplog, tiny):
    base, model = mine(tiny, arch, *CASES[arch])
    save_adapter(model, tmp_path)
    pm = peft_load_quietly(base, tmp_path, caplog)
    torch.testing.assert_close(tiny.logits(pm), tiny.logits(model), atol=1e-5, rtol=0)
    assert (tiny.logits(model) - tiny.logits(base)).abs().max() > 1e-3  # the adapter acts


def test_peft_loads_a_classifier_adapter_that_leaves_the_head_frozen(tmp_path, caplog, tiny):
    base, model = mine(tiny, "bert", ["query", "value"], None)
    save_adapter(model, tmp_path)
    assert read_adapter_config(tmp_path)["task_type"] is None  # SEQ_CLS would make PEFT expect the head
    pm = peft_load_quietly(base, tmp_path, caplog)
    torch.testing.assert_close(tiny.logits(pm), tiny.logits(model), atol=1e-7, rtol=0)  # logits of about 0.01
    assert (tiny.logits(model) - tiny.logits(base)).abs().max() > 1e-4  # the adapter acts (the small head is random)


@pytest.mark.parametrize("arch", CASES)
def test_minilora_loads_a_peft_adapter_with_the_same_outputs(arch, tmp_path, tiny):
    targets, mts = CASES[arch]
    base = tiny.make[arch]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Conv1D fan_in_fan_out; save_embedding_layers
        pm = tiny.as_if_trained(get_peft_model(copy.deepcopy(base), LoraConfig(
            r=4, lora_alpha=8, target_modules=targets, modules_to_save=mts))).eval()
        pm.save_pretrained(tmp_path)
    model = load_adapter(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(tiny.logits(model), tiny.logits(pm), atol=1e-5, rtol=0)
    assert (tiny.logits(model) - tiny.logits(base)).abs().max() > 1e-3


@pytest.mark.parametrize("arch", CASES)
def test_file_has_peft_keys_and_config(arch, tmp_path, tiny):
    targets, mts = CASES[arch]
    base, model = mine(tiny, arch, targets, mts)
    save_adapter(model, tmp_path / "mine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                       modules_to_save=mts)).save_pretrained(tmp_path / "peft")
    ours = load_file(tmp_path / "mine/adapter_model.safetensors")
    theirs = load_file(tmp_path / "peft/adapter_model.safetensors")
    # PEFT also stores the whole embedding table when an embedding is adapted; we store the adapter only
    theirs = {k: v for k, v in theirs.items() if not k.endswith("embed_tokens.base_layer.weight")}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert not any("default" in k for k in ours)
    cfg = json.loads((tmp_path / "mine/adapter_config.json").read_text())
    peft_cfg = json.loads((tmp_path / "peft/adapter_config.json").read_text())
    for key in ("peft_type", "r", "lora_alpha", "lora_dropout", "bias", "use_rslora", "modules_to_save",
                "fan_in_fan_out", "init_lora_weights"):
        assert cfg[key] == peft_cfg[key], key
    assert sorted(cfg["target_modules"]) == sorted(peft_cfg["target_modules"])
    assert cfg["task_type"] == {"bert": "SEQ_CLS", "gpt2": "CAUSAL_LM", "llama": "CAUSAL_LM"}[arch]


def test_own_round_trip_and_the_file_is_small(tmp_path, tiny):
    base, model = mine(tiny, "bert", ["query", "value"], ["classifier"])
    save_adapter(model, tmp_path)
    loaded = load_adapter(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(tiny.logits(loaded), tiny.logits(model), atol=1e-6, rtol=0)
    assert isinstance(loaded.classifier, ModulesToSaveWrapper)
    n_adapter = 2 * 2 * 4 * (32 + 32) + 3 * 32 + 3  # 2 layers x (query, value) x r(in + out), and the head
    assert os.path.getsize(tmp_path / "adapter_model.safetensors") < 4 * n_adapter + 2000
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]  # no temp files
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(tmp_path):  # readable by others, as files written with open() are
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_trained_biases_round_trip_with_peft(bias, tmp_path, caplog, tiny):
    base, model = mine(tiny, "bert", ["query", "value"], ["classifier"], bias=bias)
    save_adapter(model, tmp_path / "mine")
    pm = peft_load_quietly(base, tmp_path / "mine", caplog)
    torch.testing.assert_close(tiny.logits(pm), tiny.logits(model), atol=1e-5, rtol=0)
    pm.save_pretrained(tmp_path / "peft")  # and back: PEFT's file (it adds the head's inner copies)
    torch.testing.assert_close(tiny.logits(load_adapter(copy.deepcopy(base), tmp_path / "peft")), tiny.logits(model),
                               atol=1e-5, rtol=0)


def test_all_linear_and_rslora_round_trip_with_peft(tmp_path, caplog, tiny):
    base, model = mine(tiny, "bert", "all-linear", ["classifier"], use_rslora=True)
    save_adapter(model, tmp_path)
    pm = peft_load_quietly(base, tmp_path, caplog)
    torch.testing.assert_close(tiny.logits(pm), tiny.logits(model), atol=1e-5, rtol=0)


def test_second_adapter_saved_and_loaded_under_another_name(tmp_path, tiny):
    base, model = mine(tiny, "llama", ["q_proj"], None)
    ml.inject_lora(model, ml.LoRAConfig(r=2, lora_alpha=4, target_modules=["v_proj"]), "b")
    set_adapter(model, "b")
    tiny.as_if_trained(model, seed=5)
    save_adapter(model, tmp_path, "b")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["r"] == 2 and cfg["target_modules"] == ["v_proj"]
    other = load_adapter(copy.deepcopy(base), tmp_path, "x")
    assert list_adapters(other) == ["x"]
    torch.testing.assert_close(tiny.logits(other), tiny.logits(model), atol=1e-6, rtol=0)


def test_loaded_second_adapter_is_inactive_until_chosen(tmp_path, tiny):
    base, a = mine(tiny, "bert", ["query", "value"], None)
    save_adapter(a, tmp_path)
    model = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, target_modules=["query"]), "first")
    before = tiny.logits(model)
    load_adapter(model, tmp_path, "second")
    torch.testing.assert_close(tiny.logits(model), before)
    set_adapter(model, "second")
    torch.testing.assert_close(tiny.logits(model), tiny.logits(a), atol=1e-6, rtol=0)


def test_load_into_an_existing_adapter_with_a_resized_head(tmp_path, tiny):
    """The chapter 06 case: an adapter brings a head of another size than the base's."""
    base = tiny.bert()  # 3 labels
    cfg = ml.LoRAConfig(r=4, target_modules=["query"], modules_to_save=["classifier"])
    model = ml.inject_lora(copy.deepcopy(base), cfg, "five")
    model.classifier.modules_to_save["five"] = torch.nn.Linear(32, 5)
    tiny.as_if_trained(model)
    save_adapter(model, tmp_path, "five")
    with pytest.raises(AdapterFileError, match=r"classifier.weight  file \(5, 32\), model \(3, 32\)"):
        load_adapter(copy.deepcopy(base), tmp_path, "five")
    fresh = ml.inject_lora(copy.deepcopy(base), cfg, "five")
    fresh.classifier.modules_to_save["five"] = torch.nn.Linear(32, 5)
    load_adapter(fresh, tmp_path, "five")
    assert tiny.logits(fresh).shape == (2, 5)
    torch.testing.assert_close(tiny.logits(fresh), tiny.logits(model), atol=1e-6, rtol=0)
    with pytest.raises(AdapterFileError, match="alpha: model 16, file 8"):
        load_adapter(ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=16, target_modules=["query"])),
                     tmp_path, "default")


# ----- bad inputs ----------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path, tiny):
    base, model = mine(tiny, "bert", ["query", "value"], ["classifier"])
    save_adapter(model, tmp_path)
    return base, tmp_path


def assert_untouched(model, base, logits):
    assert not list(ml.lora_layers(model)) and not hasattr(model, "peft_config")
    assert not any(isinstance(m, ModulesToSaveWrapper) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(logits(model), logits(base))


def test_wrong_base_model_names_every_mismatch(saved, tiny):
    _, path = saved
    torch.manual_seed(0)
    other = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=48, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64, num_labels=3))
    reference = copy.deepcopy(other).eval()
    with pytest.raises(AdapterFileError) as e:
        load_adapter(other, path)
    msg = str(e.value)
    assert "shape mismatch (9):" in msg  # 2 layers x (query, value) x (A, B), and the head's weight
    assert ("base_model.model.bert.encoder.layer.1.attention.self.value.lora_A.weight  file (4, 32), "
            "model (4, 48)") in msg
    assert "base_model.model.classifier.weight  file (3, 32), model (3, 48)" in msg
    assert "different base model" in msg
    assert_untouched(other.eval(), reference, tiny.logits)


def test_missing_key_is_refused(saved, tiny):
    base, path = saved
    tensors = load_file(path / "adapter_model.safetensors")
    key = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight"
    del tensors[key]
    save_file(tensors, path / "adapter_model.safetensors")
    model = copy.deepcopy(base)
    with pytest.raises(AdapterFileError,
                       match=rf"missing from the file \(1\):\n  {key}  \(the model expects shape \(32, 4\)\)"):
        load_adapter(model, path)
    assert_untouched(model, base, tiny.logits)


def test_unexpected_key_is_refused(saved):
    base, path = saved
    tensors = load_file(path / "adapter_model.safetensors")
    tensors["base_model.model.bert.encoder.layer.0.attention.self.key.lora_A.weight"] = torch.zeros(4, 32)
    save_file(tensors, path / "adapter_model.safetensors")
    with pytest.raises(AdapterFileError,
                       match=r"unexpected in the file.*\(1\):\n  .*self\.key\.lora_A\.weight  \(shape \(4, 32\)\)"):
        load_adapter(copy.deepcopy(base), path)


@pytest.mark.parametrize("cut", [0, 7, 100, -50])
def test_truncated_or_corrupt_file_gives_a_clear_error(saved, cut):
    base, path = saved
    f = path / "adapter_model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(AdapterFileError, match="is not a readable safetensors file: it is truncated or corrupt"):
        load_adapter(copy.deepcopy(base), path)


def test_garbage_file_gives_a_clear_error(saved):
    base, path = saved
    (path / "adapter_model.safetensors").write_bytes(b"\x80\x04this is a pickle, not safetensors" * 10)
    with pytest.raises(AdapterFileError, match="truncated or corrupt"):
        load_adapter(copy.deepcopy(base), path)


@pytest.mark.parametrize("change, fragment", [
    ({"peft_type": "IA3"}, "peft_type='IA3'; minilora loads LoRA adapters only"),
    ({"peft_type": None}, "peft_type=None"),
    ({"lora_bias": True}, "lora_bias=True, which minilora does not implement"),
    ({"rank_pattern": {"query": 8}}, "rank_pattern="),
    ({"init_lora_weights": "pissa"}, "changes the base weights"),
    ({"r": "four"}, "not a valid LoRA config"),
])
def test_bad_config_is_refused(saved, change, fragment, tiny):
    base, path = saved
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg.update(change)
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    model = copy.deepcopy(base)
    with pytest.raises(AdapterFileError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        load_adapter(model, path)
    assert_untouched(model, base, tiny.logits)


def test_broken_json_and_missing_files(saved, tmp_path_factory):
    base, path = saved
    (path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": ')
    with pytest.raises(AdapterFileError, match="is not valid JSON"):
        load_adapter(copy.deepcopy(base), path)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(AdapterFileError, match="no adapter_config.json"):
        load_adapter(copy.deepcopy(base), empty)
    (empty / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    (empty / "adapter_model.bin").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(AdapterFileError, match="adapter_model.bin, a pickle, which minilora never loads"):
        load_adapter(copy.deepcopy(base), empty)


def test_adapter_for_another_architecture_is_refused(saved, tiny):
    _, path = saved
    model = tiny.llama()
    with pytest.raises(AdapterFileError, match="does not fit this model.*matched nothing"):
        load_adapter(model, path)
    assert not list(ml.lora_layers(model))


def test_loading_never_unpickles(saved, monkeypatch):
    base, path = saved

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")
    for mod, name in ((torch, "load"), (pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")):
        monkeypatch.setattr(mod, name, refuse)
    load_adapter(copy.deepcopy(base), path)


def test_an_interrupted_save_leaves_the_old_adapter_whole(saved, monkeypatch, tiny):
    base, path = saved
    before = {f: (path / f).read_bytes() for f in os.listdir(path)}
    _, other = mine(tiny, "bert", ["query", "value"], ["classifier"])
    tiny.as_if_trained(other, seed=9)

    def interrupted(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(other, path)
    monkeypatch.undo()
    assert {f: (path / f).read_bytes() for f in os.listdir(path)} == before  # same files, no temp files
    load_adapter(copy.deepcopy(base), path)


def test_save_refuses_unknown_adapters(tmp_path, tiny):
    _, model = mine(tiny, "bert", ["query"], None)
    with pytest.raises(UnknownAdapterError, match=r"no adapter named 'other' in the model; it has \['default'\]"):
        save_adapter(model, tmp_path, "other")
    with pytest.raises(UnknownAdapterError, match="inject_lora"):
        save_adapter(tiny.bert(), tmp_path)
    assert not any(tmp_path.iterdir())


# ----- set_peft_model_state_dict ---------------------------------------------------------------------
@pytest.mark.parametrize("arch", CASES)
def test_state_dict_round_trip_gives_the_same_outputs(arch, tiny):
    targets, mts = CASES[arch]
    base, model = mine(tiny, arch, targets, mts)
    other = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=8, target_modules=targets,
                                                              modules_to_save=mts))
    assert not torch.allclose(tiny.logits(other), tiny.logits(model), atol=1e-3)
    assert set_peft_model_state_dict(other, get_peft_model_state_dict(model)) is other
    torch.testing.assert_close(tiny.logits(other), tiny.logits(model), atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", CASES)
def test_a_peft_state_dict_loads_with_the_same_outputs(arch, tiny):
    from peft import get_peft_model_state_dict as peft_state_dict

    targets, mts = CASES[arch]
    base = tiny.make[arch]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Conv1D fan_in_fan_out
        pm = tiny.as_if_trained(get_peft_model(copy.deepcopy(base), LoraConfig(
            r=4, lora_alpha=8, target_modules=targets, modules_to_save=mts))).eval()
    model = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=8, target_modules=targets,
                                                              modules_to_save=mts))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's save_embedding_layers note
        theirs = peft_state_dict(pm)
    set_peft_model_state_dict(model, theirs)
    torch.testing.assert_close(tiny.logits(model), tiny.logits(pm), atol=1e-5, rtol=0)
    assert (tiny.logits(model) - tiny.logits(base)).abs().max() > 1e-3


def test_state_dict_of_the_second_adapter_loads_into_that_adapter_only(tiny):
    base, model = mine(tiny, "llama", ["q_proj"], None)
    ml.inject_lora(model, ml.LoRAConfig(r=2, lora_alpha=4, target_modules=["v_proj"]), "b")
    set_adapter(model, "b")
    tiny.as_if_trained(model, seed=5)
    other = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    ml.inject_lora(other, ml.LoRAConfig(r=2, lora_alpha=4, target_modules=["v_proj"]), "b")
    default_before = get_peft_model_state_dict(other, "default")
    set_peft_model_state_dict(other, get_peft_model_state_dict(model, "b"), "b")
    for k, v in get_peft_model_state_dict(other, "default").items():
        assert torch.equal(v, default_before[k])
    set_adapter(other, "b")
    torch.testing.assert_close(tiny.logits(other), tiny.logits(model), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"missing from the state dict \(4\):\n(  .*q_proj.*\n){4}unexpected in the "
                                         r"state dict, no such place in the model \(4\):\n(  .*v_proj.*\n){4}Pass"):
        set_peft_model_state_dict(other, get_peft_model_state_dict(model, "b"), "default")  # every key is named


def test_load_adapter_returns_the_model_and_fills_an_existing_adapter(saved, tiny):
    base, path = saved
    model = copy.deepcopy(base)
    assert load_adapter(model, path) is model
    again = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                              modules_to_save=["classifier"]))
    assert load_adapter(again, path) is again
    torch.testing.assert_close(tiny.logits(again), tiny.logits(model), atol=0, rtol=0)


def test_write_atomic_writes_text_or_bytes_into_a_new_folder(tmp_path):
    path = tmp_path / "new" / "results.csv"
    write_atomic(path, "a,b\n1,é\n")
    assert path.read_bytes() == "a,b\n1,é\n".encode()
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and os.listdir(path.parent) == ["results.csv"]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # an ordinary file, not mkstemp's private 0600


def test_an_interrupted_write_atomic_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "results.csv"
    write_atomic(path, "old\n")

    def interrupted(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["results.csv"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
