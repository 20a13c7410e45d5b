"""Validate, then change: every bad input of the functions that read and write adapters, quantize a model or
wrap it for prompt learning is refused with the right kind of error and leaves the model exactly as it was.

Each case builds a real model (tiny BERT, GPT-2 or Llama with 0, 1 or 2 adapters, with and without
``modules_to_save``), takes ``snapshot.take(model)``, makes the bad call, checks the exception's exact type
and a fragment of its message, and compares the whole model with the snapshot (module tree, parameter
values, ``requires_grad``, adapter state, ``peft_config``, train mode). The refusals of ``load_adapter``
that need the new adapter's layers (wrong keys, shapes, dtypes) inject them first and must undo that
exactly: those run on every model kind.
"""
import json
import pickle
import shutil
from dataclasses import dataclass
from typing import Callable

import pytest
import snapshot
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import minilora as ml
from minilora.errors import AdapterFileError, UnknownAdapterError
from minilora.io import load_adapter, save_adapter, set_peft_model_state_dict
from minilora.prompting import PrefixTuningConfig, PromptTuningConfig, add_prompt_learning, init_prefix_from_text
from minilora.qlora import quantize_model_nf4
from minilora.state_dict import get_peft_model_state_dict

QV = {"bert": ["query", "value"], "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}
OTHER = {"bert": ["key", "value"], "gpt2": ["c_attn", "c_proj"], "llama": ["v_proj", "o_proj"]}


def lora_model(tiny, arch="bert", adapters=1, mts=True):
    """A tiny model with 0, 1 or 2 adapters ("default", "second"), as if trained, "default" active."""
    model = tiny.make[arch]()
    saved = ["classifier"] if mts and arch == "bert" else None
    if adapters >= 1:
        ml.inject_lora(model, ml.LoRAConfig(r=4, lora_alpha=8, target_modules=QV[arch], modules_to_save=saved))
    if adapters >= 2:
        ml.inject_lora(model, ml.LoRAConfig(r=2, target_modules=OTHER[arch], modules_to_save=saved), "second")
        ml.set_adapter(model, "default")  # (a layer's first adapter starts active: "second", where "default" is not)
    return tiny.as_if_trained(model) if adapters else model


def folder(tiny, tmp_path, arch="bert", mts=True):
    """A good adapter folder for ``arch`` (its "default" adapter of ``lora_model``)."""
    return save_adapter(lora_model(tiny, arch, 1, mts), tmp_path / f"good_{arch}")


def damaged(tiny, tmp_path, arch, how, mts=True):
    """A copy of the good folder with its tensors damaged ``how``."""
    good = folder(tiny, tmp_path, arch, mts)
    bad = tmp_path / f"bad_{arch}_{how}"
    shutil.copytree(good, bad)
    tensors = load_file(bad / "adapter_model.safetensors")
    key = sorted(k for k in tensors if k.endswith("lora_A.weight"))[0]
    if how == "missing":
        del tensors[key]
    elif how == "unexpected":
        tensors["base_model.model.no_such_layer.lora_A.weight"] = torch.zeros(4, 32)
    elif how == "shape":
        tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 1)
    elif how == "dtype":
        tensors[key] = tensors[key].to(torch.int32)
    save_file(tensors, bad / "adapter_model.safetensors")
    return bad


def edit_config(tiny, tmp_path, change=None, text=None):
    """A copy of the good bert folder whose adapter_config.json is updated with ``change``, or replaced by ``text``."""
    good = folder(tiny, tmp_path)
    bad = tmp_path / "bad_config"
    shutil.copytree(good, bad)
    path = bad / "adapter_config.json"
    path.write_text(text if text is not None else json.dumps({**json.loads(path.read_text()), **change}))
    return bad


def prompt_folder(tiny, tmp_path, method=PrefixTuningConfig, arch="llama"):
    return save_adapter(add_prompt_learning(tiny.make[arch](), method(3)), tmp_path / f"prompt_{arch}")


@dataclass
class Case:
    id: str
    build: Callable  # (tiny, tmp_path) -> (model, call); call(model) must raise
    error: type
    fragment: str


def case(id, error, fragment, build):
    return pytest.param(Case(id, build, error, fragment), id=id)


def on(make, call):
    """A builder: ``make(tiny, tmp_path)`` gives the model, ``call(model, tiny, tmp_path)`` the refused call."""
    def build(tiny, tmp_path):
        model = make(tiny, tmp_path)
        return model, lambda m: call(m, tiny, tmp_path)
    return build


def bert(adapters=1, mts=True):
    return lambda tiny, tmp_path: lora_model(tiny, "bert", adapters, mts)


def merged(tiny, tmp_path):
    model = lora_model(tiny)
    ml.merge_adapter(model)
    return model


def prompt_model(method=PrefixTuningConfig, **kw):
    return lambda tiny, tmp_path: add_prompt_learning(tiny.llama(), method(3, **kw))


MODELS = {  # the models a refused load_adapter must leave as they were
    "bert0": ("bert", 0, True), "bert1": ("bert", 1, True), "bert1-no-mts": ("bert", 1, False),
    "bert2": ("bert", 2, True), "bert2-no-mts": ("bert", 2, False), "llama0": ("llama", 0, False),
    "llama1": ("llama", 1, False), "gpt2-2": ("gpt2", 2, False),
}
DAMAGE = {"missing": "missing from the file", "unexpected": "unexpected in the file",
          "shape": "shape mismatch", "dtype": "not floating point"}


def _rollback(arch, n, mts, how):
    def build(tiny, tmp_path):
        bad = damaged(tiny, tmp_path, arch, how, mts)
        return lora_model(tiny, arch, n, mts), lambda m: load_adapter(m, bad, "new")
    return build


def _stacked(tiny, tmp_path):
    """Two adapters on the same layers, stacked in the order "second", "default" (the layers keep that order)."""
    model = lora_model(tiny, "bert", 1, False)
    tiny.as_if_trained(ml.inject_lora(model, ml.LoRAConfig(r=2, target_modules=QV["bert"]), "second"), seed=4)
    ml.set_adapter(model, ["second", "default"])
    return model


def _existing(how):
    def build(tiny, tmp_path):
        bad = damaged(tiny, tmp_path, "bert", how)
        return lora_model(tiny), lambda m: load_adapter(m, bad, "default")
    return build


LOAD = [
    *(case(f"load-{how}-into-{name}", AdapterFileError, DAMAGE[how], _rollback(*MODELS[name], how))
      for name in MODELS for how in DAMAGE),
    case("load-shape-into-bert2-stacked", AdapterFileError, "shape mismatch",
         on(_stacked, lambda m, t, p: load_adapter(m, damaged(t, p, "bert", "shape", False), "new"))),
    *(case(f"load-{how}-into-the-existing-adapter", AdapterFileError, DAMAGE[how], _existing(how)) for how in DAMAGE),
    case("load-directory-not-a-path", TypeError, "is a path", on(bert(), lambda m, t, p: load_adapter(m, 42))),
    case("load-missing-folder", AdapterFileError, "does not exist",
         on(bert(), lambda m, t, p: load_adapter(m, p / "nowhere", "new"))),
    case("load-a-file-not-a-folder", AdapterFileError, "is a file, not an adapter folder",
         on(bert(), lambda m, t, p: load_adapter(m, folder(t, p) / "adapter_config.json", "new"))),
    case("load-empty-folder", AdapterFileError, "no adapter_config.json",
         on(bert(0), lambda m, t, p: load_adapter(m, p))),
    case("load-pickle-only", AdapterFileError, "adapter_model.bin, a pickle, which minilora never loads",
         on(bert(0), lambda m, t, p: load_adapter(m, _pickle_only(t, p)))),
    case("load-broken-json", AdapterFileError, "is not valid JSON",
         on(bert(), lambda m, t, p: load_adapter(m, edit_config(t, p, text='{"peft_type": "LORA", "r": '), "new"))),
    case("load-json-not-an-object", AdapterFileError, "should hold a JSON object",
         on(bert(), lambda m, t, p: load_adapter(m, edit_config(t, p, text="[1, 2]"), "new"))),
    case("load-not-lora", AdapterFileError, "minilora loads LoRA adapters only",
         on(bert(), lambda m, t, p: load_adapter(m, edit_config(t, p, {"peft_type": "IA3"}), "new"))),
    case("load-bad-r", AdapterFileError, "not a valid LoRA config",
         on(bert(), lambda m, t, p: load_adapter(m, edit_config(t, p, {"r": "four"}), "new"))),
    case("load-unsupported-option", AdapterFileError, "rank_pattern",
         on(bert(), lambda m, t, p: load_adapter(m, edit_config(t, p, {"rank_pattern": {"query": 8}}), "new"))),
    case("load-truncated-weights", AdapterFileError, "truncated or corrupt",
         on(bert(), lambda m, t, p: load_adapter(m, _truncated(t, p), "new"))),
    case("load-another-architecture", AdapterFileError, "does not fit this model",
         on(lambda t, p: lora_model(t, "llama", 1, False), lambda m, t, p: load_adapter(m, folder(t, p), "new"))),
    case("load-name-not-a-string", TypeError, "adapter name is a string",
         on(bert(), lambda m, t, p: load_adapter(m, folder(t, p), 3))),
    case("load-name-with-a-dot", ValueError, "without dots",
         on(bert(), lambda m, t, p: load_adapter(m, folder(t, p), "a.b"))),
    case("load-empty-name", ValueError, "non-empty", on(bert(), lambda m, t, p: load_adapter(m, folder(t, p), ""))),
    case("load-into-a-merged-model", ValueError, "unmerge_adapter",
         on(merged, lambda m, t, p: load_adapter(m, folder(t, p), "new"))),
    case("load-existing-adapter-other-config", AdapterFileError, "differs from the file",
         on(lambda t, p: ml.inject_lora(t.bert(), ml.LoRAConfig(r=2, target_modules=["query"])),
            lambda m, t, p: load_adapter(m, folder(t, p), "default"))),
    case("load-model-not-a-module", TypeError, "nn.Module",
         on(bert(), lambda m, t, p: load_adapter({"not": "a model"}, folder(t, p)))),
    case("load-lora-into-a-prompt-model", ValueError, "model.base_model",
         on(prompt_model(), lambda m, t, p: load_adapter(m, save_adapter(lora_model(t, "llama", 1, False), p / "l")))),
    case("load-prompt-into-a-prompt-model", ValueError, "has a prompt already",
         on(prompt_model(), lambda m, t, p: load_adapter(m, prompt_folder(t, p)))),
    case("load-prompt-from-another-base", AdapterFileError, "does not fit this model",
         on(lambda t, p: t.gpt2(), lambda m, t, p: load_adapter(m, prompt_folder(t, p)))),
    case("load-prompt-bad-name", ValueError, "without dots",
         on(lambda t, p: t.llama(), lambda m, t, p: load_adapter(m, prompt_folder(t, p), "a.b"))),
]


def _pickle_only(tiny, tmp_path):
    path = tmp_path / "pickled"
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    (path / "adapter_model.bin").write_bytes(pickle.dumps({"x": 1}))
    return path


def _truncated(tiny, tmp_path):
    path = edit_config(tiny, tmp_path, {})
    weights = path / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-50])
    return path


SAVE = [
    case("save-unknown-adapter", UnknownAdapterError, "no adapter named 'other'",
         on(bert(2), lambda m, t, p: save_adapter(m, p / "out", "other"))),
    case("save-no-adapters", UnknownAdapterError, "has no adapters", on(bert(0), lambda m, t, p: save_adapter(m, p))),
    case("save-name-not-a-string", TypeError, "adapter name is a string",
         on(bert(), lambda m, t, p: save_adapter(m, p / "out", None))),
    case("save-directory-not-a-path", TypeError, "is a path", on(bert(), lambda m, t, p: save_adapter(m, 3.5))),
    case("save-directory-is-a-file", AdapterFileError, "is a file",
         on(lambda t, p: _a_file(p) and lora_model(t), lambda m, t, p: save_adapter(m, p / "a_file"))),
    case("save-initial-not-a-path", TypeError, "path_initial_model_for_weight_conversion",
         on(bert(), lambda m, t, p: save_adapter(m, p / "out", path_initial_model_for_weight_conversion=1))),
    case("save-initial-for-a-plain-lora", ValueError, "converts a PiSSA adapter",
         on(bert(), lambda m, t, p: save_adapter(m, p / "out", path_initial_model_for_weight_conversion=p))),
    case("save-prompt-unknown-adapter", UnknownAdapterError, "no adapter named 'other'",
         on(prompt_model(), lambda m, t, p: save_adapter(m, p / "out", "other"))),
    case("save-prompt-directory-not-a-path", TypeError, "is a path",
         on(prompt_model(), lambda m, t, p: save_adapter(m, ["out"]))),
]


def _a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def _state(how):
    def call(m, tiny, tmp_path):
        sd = get_peft_model_state_dict(m)
        key = sorted(k for k in sd if k.endswith("lora_A.weight"))[0]
        if how == "missing":
            del sd[key]
        elif how == "unexpected":
            sd["base_model.model.no_such_layer.lora_A.weight"] = torch.zeros(4, 32)
        elif how == "shape":
            sd[key] = torch.zeros(4, 33)
        elif how == "dtype":
            sd[key] = sd[key].to(torch.int64)
        return set_peft_model_state_dict(m, sd)
    return call


STATE = [
    *(case(f"state-dict-{how}-{name}", ValueError, DAMAGE[how].replace(" the file", ""),
           on(bert(n, mts), _state(how))) for how in DAMAGE for name, n, mts in [("bert1", 1, True),
                                                                                   ("bert2-no-mts", 2, False)]),
    case("state-dict-unknown-adapter", UnknownAdapterError, "no adapter named 'nope'",
         on(bert(2), lambda m, t, p: set_peft_model_state_dict(m, get_peft_model_state_dict(m), "nope"))),
    case("state-dict-no-adapters", UnknownAdapterError, "has no adapters",
         on(bert(0), lambda m, t, p: set_peft_model_state_dict(m, {}))),
    case("state-dict-not-a-dict", TypeError, "dict of tensors",
         on(bert(), lambda m, t, p: set_peft_model_state_dict(m, list(get_peft_model_state_dict(m).items())))),
    case("state-dict-values-not-tensors", TypeError, "not str -> torch.Tensor",
         on(bert(), lambda m, t, p: set_peft_model_state_dict(
             m, {k: v.tolist() for k, v in get_peft_model_state_dict(m).items()}))),
    case("state-dict-name-not-a-string", TypeError, "adapter name is a string",
         on(bert(), lambda m, t, p: set_peft_model_state_dict(m, get_peft_model_state_dict(m), 0))),
    case("state-dict-merged", ValueError, "unmerge_adapter",
         on(merged, lambda m, t, p: set_peft_model_state_dict(m, get_peft_model_state_dict(m)))),
    case("state-dict-prompt-wrong-key", ValueError, "holds one tensor",
         on(prompt_model(), lambda m, t, p: set_peft_model_state_dict(m, {"prompt": torch.zeros(3, 64)}))),
    case("state-dict-prompt-wrong-shape", ValueError, "needs (3, 64)",
         on(prompt_model(), lambda m, t, p: set_peft_model_state_dict(m, {"prompt_embeddings": torch.zeros(3, 65)}))),
    case("state-dict-prompt-projection", ValueError, "prefix_projection",
         on(prompt_model(prefix_projection=True),
            lambda m, t, p: set_peft_model_state_dict(m, get_peft_model_state_dict(m)))),
    case("state-dict-prompt-unknown-adapter", UnknownAdapterError, "no adapter named 'x'",
         on(prompt_model(), lambda m, t, p: set_peft_model_state_dict(m, get_peft_model_state_dict(m), "x"))),
]


def _inf_in_a_later_layer(tiny, tmp_path):
    model = tiny.llama()
    with torch.no_grad():  # (inf, not NaN: the snapshot compares with torch.equal, and NaN != NaN)
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("inf")
    return model


def dora(tiny, tmp_path):
    return ml.inject_lora(tiny.llama(), ml.LoRAConfig(r=2, target_modules=["q_proj"], use_dora=True))


def llama(tiny, tmp_path):
    return tiny.llama()


def nf4(**kw):
    """A builder: quantize_model_nf4(tiny Llama, **kw)."""
    return on(llama, lambda m, t, p: quantize_model_nf4(m, **kw))


QUANTIZE = [
    case("nf4-odd-blocksize", ValueError, "even integer", nf4(blocksize=63)),
    case("nf4-zero-blocksize", ValueError, "blocksize must be an integer >= 2",
         nf4(blocksize=0)),
    case("nf4-blocksize-a-string", TypeError, "blocksize", nf4(blocksize="64")),
    case("nf4-blocksize-a-bool", TypeError, "blocksize", nf4(blocksize=True)),
    case("nf4-double-quant-not-a-bool", TypeError, "double_quant",
         nf4(double_quant="yes")),
    case("nf4-compute-dtype-an-int", TypeError, "compute_dtype",
         nf4(compute_dtype=torch.int8)),
    case("nf4-compute-dtype-a-string", TypeError, "compute_dtype",
         nf4(compute_dtype="bfloat16")),
    case("nf4-skip-a-string", TypeError, "not a string", nf4(skip="lm_head")),
    case("nf4-skip-not-strings", TypeError, "layer names", nf4(skip=[1])),
    case("nf4-skip-matches-nothing", ValueError, "matched no linear layer",
         nf4(skip=["lm_head", "q_proj_typo"])),
    case("nf4-merged-lora", ValueError, "unmerge_adapter", on(merged, lambda m, t, p: quantize_model_nf4(m))),
    case("nf4-dora", ValueError, "use_dora=False", on(dora, lambda m, t, p: quantize_model_nf4(m))),
    case("nf4-single-layer", ValueError, "LinearNF4.from_linear",
         on(lambda t, p: nn.Linear(64, 64), lambda m, t, p: quantize_model_nf4(m))),
    case("nf4-not-a-module", TypeError, "nn.Module", on(llama, lambda m, t, p: quantize_model_nf4(m.state_dict()))),
    case("nf4-a-layer-fails-mid-way", ValueError, "cannot quantize model.layers.1.mlp.down_proj",
         on(_inf_in_a_later_layer, lambda m, t, p: quantize_model_nf4(m))),
]


def _tokenizer_dir(tmp_path):
    """A word-level tokenizer of 12 words, saved as transformers saves one (ids fit the tiny vocab of 100)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "the a review is positive negative neutral predict if sentiment of [UNK]".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    return str(tmp_path / "tok")


def _text(tmp_path, text="is positive", tokenizer=None):
    return PromptTuningConfig(3, prompt_tuning_init="TEXT", prompt_tuning_init_text=text,
                              tokenizer_name_or_path=tokenizer or _tokenizer_dir(tmp_path))


def _changed(config, **fields):
    """``config`` with fields set after construction, as a user might (add_prompt_learning checks them again)."""
    for k, v in fields.items():
        setattr(config, k, v)
    return config


def _checkpointed(tiny, tmp_path):
    model = tiny.llama()
    model.gradient_checkpointing_enable()
    return model


def _tokenizer(tmp_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_tokenizer_dir(tmp_path))


def far_ids(text):  # a callable tokenizer whose ids lie outside the tiny vocabulary of 100
    return {"input_ids": [500, 501]}


PROMPT = [
    case("prompt-lora-config", TypeError, "inject_lora",
         on(llama, lambda m, t, p: add_prompt_learning(m, ml.LoRAConfig(r=2)))),
    case("prompt-n-a-bool", TypeError, "num_virtual_tokens",
         on(llama, lambda m, t, p: add_prompt_learning(m, _changed(PromptTuningConfig(3), num_virtual_tokens=True)))),
    case("prompt-n-a-string", TypeError, "num_virtual_tokens",
         on(llama, lambda m, t, p: add_prompt_learning(m, _changed(PrefixTuningConfig(3), num_virtual_tokens="8")))),
    case("prompt-n-zero", ValueError, "num_virtual_tokens must be an integer >= 1",
         on(llama, lambda m, t, p: add_prompt_learning(m, _changed(PromptTuningConfig(3), num_virtual_tokens=0)))),
    case("prompt-projection-not-a-bool", TypeError, "prefix_projection",
         on(llama, lambda m, t, p: add_prompt_learning(m, _changed(PrefixTuningConfig(3), prefix_projection="yes")))),
    case("prompt-twice", ValueError, "wrap the base model",
         on(prompt_model(), lambda m, t, p: add_prompt_learning(m, PrefixTuningConfig(2)))),
    case("prompt-not-a-language-model", TypeError, "causal LM",
         on(lambda t, p: nn.Sequential(nn.Linear(4, 4)),
            lambda m, t, p: add_prompt_learning(m, PromptTuningConfig(2)))),
    case("prompt-name-not-a-string", TypeError, "adapter name is a string",
         on(llama, lambda m, t, p: add_prompt_learning(m, PromptTuningConfig(2), 7))),
    case("prompt-name-with-a-dot", ValueError, "without dots",
         on(llama, lambda m, t, p: add_prompt_learning(m, PromptTuningConfig(2), "a.b"))),
    case("prompt-prefix-with-checkpointing", ValueError, "gradient_checkpointing_disable",
         on(_checkpointed, lambda m, t, p: add_prompt_learning(m, PrefixTuningConfig(2)))),
    case("prompt-text-no-tokenizer", ValueError, "cannot load the tokenizer",
         on(llama, lambda m, t, p: add_prompt_learning(m, _text(p, tokenizer=str(p / "no_tokenizer_here"))))),
    case("prompt-text-gives-no-tokens", ValueError, "gives no tokens",
         on(llama, lambda m, t, p: add_prompt_learning(m, _text(p, text="   ")))),
    case("prefix-init-not-a-prompt-model", TypeError, "add_prompt_learning",
         on(llama, lambda m, t, p: init_prefix_from_text(m, _tokenizer(p), "is positive"))),
    case("prefix-init-unknown-adapter", UnknownAdapterError, "no adapter named 'other'",
         on(prompt_model(), lambda m, t, p: init_prefix_from_text(m, _tokenizer(p), "is positive", "other"))),
    case("prefix-init-prompt-tuning", ValueError, "prompt_tuning_init='TEXT'",
         on(prompt_model(PromptTuningConfig), lambda m, t, p: init_prefix_from_text(m, _tokenizer(p), "is positive"))),
    case("prefix-init-projection", ValueError, "prefix_projection",
         on(prompt_model(prefix_projection=True), lambda m, t, p: init_prefix_from_text(m, _tokenizer(p), "a"))),
    case("prefix-init-text-not-a-string", TypeError, "text must be a string",
         on(prompt_model(), lambda m, t, p: init_prefix_from_text(m, _tokenizer(p), ["is", "positive"]))),
    case("prefix-init-empty-text", ValueError, "gives no tokens",
         on(prompt_model(), lambda m, t, p: init_prefix_from_text(m, _tokenizer(p), ""))),
    case("prefix-init-no-tokenizer", TypeError, "tokenizer must be a tokenizer",
         on(prompt_model(), lambda m, t, p: init_prefix_from_text(m, None, "is positive"))),
    case("prefix-init-ids-outside-the-vocabulary", ValueError, "outside the model's vocabulary",
         on(prompt_model(), lambda m, t, p: init_prefix_from_text(m, far_ids, "is positive"))),
]


@pytest.mark.parametrize("case", LOAD + SAVE + STATE + QUANTIZE + PROMPT)
def test_refused_with_the_right_error_and_the_model_unchanged(case, tiny, tmp_path):
    model, call = case.build(tiny, tmp_path)
    before = snapshot.take(model)
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(Exception) as caught:
        call(model)
    assert type(caught.value) is case.error, f"{type(caught.value).__name__}: {caught.value}"
    assert case.fragment in str(caught.value), str(caught.value)
    snapshot.assert_same(before, model)
    if case.id.startswith("save-"):  # a refused save writes nothing
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == files


def test_a_refused_prompt_wrapping_leaves_the_base_trainable(tiny, tmp_path):
    """Wrapping freezes the base model; a refused wrap (here a TEXT init with no tokens) must not have."""
    model = tiny.llama()
    with pytest.raises(ValueError, match="gives no tokens"):
        add_prompt_learning(model, _text(tmp_path, text="   "))
    assert all(p.requires_grad for p in model.parameters())


def test_the_undone_injection_leaves_the_model_working_as_before(tiny, tmp_path):
    """After a refused load into a model with two adapters, the model still computes, trains and switches as
    before: the same logits, the same trainable set, and set_adapter still works."""
    model = lora_model(tiny, "bert", 2, True)
    logits, trainable = tiny.logits(model), {n for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(AdapterFileError, match="shape mismatch"):
        load_adapter(model, damaged(tiny, tmp_path, "bert", "shape"), "new")
    torch.testing.assert_close(tiny.logits(model), logits, atol=0, rtol=0)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert ml.list_adapters(model) == ["default", "second"]
    ml.set_adapter(model, "second")
    assert not torch.equal(tiny.logits(model), logits)
