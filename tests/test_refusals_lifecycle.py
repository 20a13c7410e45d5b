"""Validate, then change: every mutator of the adapter lifecycle, driven with bad input on tiny BERT, GPT-2 and
Llama, raises the right error (type and message) and leaves the model exactly as it was (``snapshot``).

Also: the four bugs an outside reading reproduced, ``inject_lora``'s rollback when a layer still fails
half-way, ``enable_adapter_layers`` / ``disable_adapter_layers`` against PEFT, and every mutator returning
the model."""
import copy
import threading
import warnings

import pytest
import snapshot
import torch
from torch import nn

import minilora as ml
from minilora.adapters import (
    add_adapter,
    add_weighted_adapter,
    combination_report,
    delete_adapter,
    list_adapters,
    set_adapter,
)
from minilora.errors import UnknownAdapterError
from minilora.layers import LoRALinear
from minilora.modules_to_save import ModulesToSaveWrapper
from minilora.variants import LoraVariant

ARCH = {  # adapter a (rank 4, with a saved head) and b (rank 2, other targets), and what the cases name
    "bert": dict(a=["query", "value"], b=["value", "key"], free=["key"], head="classifier",
                 embedding="word_embeddings"),
    "gpt2": dict(a=["c_attn"], b=["c_attn", "c_fc"], free=["c_fc"], head="lm_head", embedding="wte"),
    "llama": dict(a=["q_proj", "v_proj"], b=["v_proj", "down_proj"], free=["k_proj"], head="lm_head",
                  embedding="embed_tokens"),
}


def cfg_a(arch):
    return ml.LoRAConfig(r=4, lora_alpha=8, target_modules=ARCH[arch]["a"], modules_to_save=[ARCH[arch]["head"]])


def cfg_b(arch, **kw):
    return ml.LoRAConfig(r=2, lora_alpha=4, target_modules=ARCH[arch]["b"], **kw)


def build(tiny, arch, state):
    """A tiny model in ``state``: "plain" (no adapter), "one" (a), "two" (a active, b), "merged" (two, a merged),
    "disabled" (two, adapter layers off), "dora" (a active, d a DoRA adapter)."""
    model = tiny.make[arch]()
    if state == "plain":
        return model
    ml.inject_lora(model, cfg_a(arch), "a")
    if state != "one":
        add_adapter(model, "d" if state == "dora" else "b", cfg_b(arch, use_dora=state == "dora"))
    tiny.as_if_trained(model)
    set_adapter(model, "a")
    if state == "merged":
        ml.merge_adapter(model)
    if state == "disabled":
        ml.disable_adapter_layers(model)
    return model


def cfg(**kw):
    return lambda A: ml.LoRAConfig(**{"target_modules": A["a"], **kw})


def mutated_config(A):
    config = ml.LoRAConfig(target_modules=A["free"])
    config.r = 0  # changed after construction, where LoRAConfig's own checks no longer see it
    return config


WEIGHTED = dict(adapters=["a", "b"], weights=[0.5, 0.5], adapter_name="mix")


def weighted(**kw):
    return lambda m, A: add_weighted_adapter(m, **{**WEIGHTED, **kw})


# (id, state, call(model, arch info), error, message fragment)
CASES = [
    # inject_lora
    ("inject/config-type", "one", lambda m, A: ml.inject_lora(m, {"r": 4}, "c"), TypeError, "LoRAConfig"),
    ("inject/name-type", "one", lambda m, A: ml.inject_lora(m, cfg()(A), 3), TypeError, "adapter_name must be a"),
    ("inject/name-dot", "one", lambda m, A: ml.inject_lora(m, cfg()(A), "x.y"), ValueError, "without dots"),
    ("inject/name-empty", "one", lambda m, A: ml.inject_lora(m, cfg()(A), ""), ValueError, "non-empty"),
    ("inject/name-method", "one", lambda m, A: ml.inject_lora(m, cfg()(A), "half"), ValueError,
     "name of an nn.Module attribute"),
    ("inject/name-duplicate", "two", lambda m, A: ml.inject_lora(m, cfg()(A), "b"), ValueError,
     "already has an adapter named 'b'"),
    ("inject/targets-nothing", "one", lambda m, A: ml.inject_lora(m, cfg(target_modules=["qproj"])(A), "c"),
     ValueError, "matched nothing"),
    ("inject/targets-all-excluded", "plain",
     lambda m, A: ml.inject_lora(m, cfg(exclude_modules=A["a"])(A)), ValueError, "excluded every one"),
    ("inject/saved-typo", "plain", lambda m, A: ml.inject_lora(m, cfg(modules_to_save=[A["head"][:-1]])(A)),
     ValueError, "matched no module; did you mean"),
    ("inject/saved-typo-second-adapter", "one",
     lambda m, A: ml.inject_lora(m, cfg(modules_to_save=[A["head"] + "s"])(A), "c"), ValueError, "matched no module"),
    ("inject/saved-is-target", "plain",
     lambda m, A: ml.inject_lora(m, cfg(target_modules=A["a"] + [A["head"]], modules_to_save=[A["head"]])(A)),
     ValueError, "is a LoRA target"),
    ("inject/saved-is-lora-layer", "one",
     lambda m, A: ml.inject_lora(m, cfg(target_modules=A["free"], modules_to_save=[A["a"][0]])(A), "c"), ValueError,
     "a LoRA layer of another adapter"),
    ("inject/merged", "merged", lambda m, A: ml.inject_lora(m, cfg(target_modules=A["free"])(A), "c"), ValueError,
     "merged into the base weights"),
    ("inject/dora-embedding", "one",
     lambda m, A: ml.inject_lora(m, cfg(target_modules=A["a"] + [A["embedding"]], use_dora=True)(A), "c"),
     ValueError, "use_dora=True on"),
    ("inject/pissa-embedding", "plain",
     lambda m, A: ml.inject_lora(m, cfg(target_modules=A["a"] + [A["embedding"]], init_lora_weights="pissa")(A)),
     ValueError, "an embedding"),
    ("inject/pissa-rank", "one", lambda m, A: ml.inject_lora(m, cfg(r=64, init_lora_weights="pissa")(A), "c"),
     ValueError, "singular directions"),
    ("inject/config-changed-after-construction", "one", lambda m, A: ml.inject_lora(m, mutated_config(A), "c"),
     ValueError, "r must be"),
    # add_adapter
    ("add/peft-order", "one", lambda m, A: add_adapter(m, cfg()(A), "c"), TypeError, "PEFT's order"),
    ("add/config-type", "one", lambda m, A: add_adapter(m, "c", {"r": 4}), TypeError, "LoRAConfig"),
    ("add/duplicate", "two", lambda m, A: add_adapter(m, "a", cfg()(A)), ValueError, "already has an adapter named"),
    ("add/merged", "merged", lambda m, A: add_adapter(m, "c", cfg()(A)), ValueError, "merged"),
    ("add/saved-is-lora-layer", "two",
     lambda m, A: add_adapter(m, "c", cfg(target_modules=A["free"], modules_to_save=[A["a"][0]])(A)), ValueError,
     "a module is either adapted by a low-rank update or trained whole"),
    # set_adapter
    ("set/unknown", "two", lambda m, A: set_adapter(m, "z"), UnknownAdapterError, "no adapter named 'z'"),
    ("set/typo", "two", lambda m, A: set_adapter(m, "A"), UnknownAdapterError, "it has ['a', 'b']"),
    ("set/unknown-in-list", "two", lambda m, A: set_adapter(m, ["a", "bb"]), UnknownAdapterError, "'bb'"),
    ("set/no-adapters", "plain", lambda m, A: set_adapter(m, "a"), UnknownAdapterError, "has no adapters"),
    ("set/type", "two", lambda m, A: set_adapter(m, 3), TypeError, "adapter name"),
    ("set/type-in-list", "two", lambda m, A: set_adapter(m, ["a", None]), TypeError, "adapter name"),
    ("set/empty", "two", lambda m, A: set_adapter(m, []), ValueError, "give at least one adapter name"),
    ("set/twice", "two", lambda m, A: set_adapter(m, ["b", "b"]), ValueError, "named twice"),
    ("set/merged", "merged", lambda m, A: set_adapter(m, "b"), ValueError, "unmerge_adapter"),
    # delete_adapter
    ("delete/unknown", "two", lambda m, A: delete_adapter(m, "c"), UnknownAdapterError, "no adapter named 'c'"),
    ("delete/list", "two", lambda m, A: delete_adapter(m, ["a"]), TypeError, "adapter name"),
    ("delete/none", "two", lambda m, A: delete_adapter(m, None), TypeError, "adapter name"),
    ("delete/merged", "merged", lambda m, A: delete_adapter(m, "a"), ValueError, "unmerge_adapter"),
    # add_weighted_adapter
    ("weighted/unknown", "two", weighted(adapters=["a", "c"]), UnknownAdapterError, "no adapter named 'c'"),
    ("weighted/adapters-str", "two", weighted(adapters="ab", weights=[1.0]), TypeError, "adapters must be"),
    ("weighted/adapters-empty", "two", weighted(adapters=[], weights=[]), ValueError, "at least one adapter"),
    ("weighted/adapters-twice", "two", weighted(adapters=["a", "a"]), ValueError, "named twice"),
    ("weighted/weights-count", "two", weighted(weights=[1.0]), ValueError, "one weight per adapter"),
    ("weighted/weights-str", "two", weighted(weights="0.5"), TypeError, "weights must be"),
    ("weighted/weights-bool", "two", weighted(weights=[True, 1.0]), TypeError, "weights must be numbers"),
    ("weighted/weights-nan", "two", weighted(weights=[float("nan"), 1.0]), ValueError, "finite"),
    ("weighted/name-taken", "two", weighted(adapter_name="b"), ValueError, "already has an adapter named 'b'"),
    ("weighted/name-dot", "two", weighted(adapter_name="m.x"), ValueError, "without dots"),
    ("weighted/name-type", "two", weighted(adapter_name=1), TypeError, "adapter_name must be a string"),
    ("weighted/type-unknown", "two", weighted(combination_type="mean"), ValueError, "combination_type must be one of"),
    ("weighted/type-type", "two", weighted(combination_type=3), TypeError, "combination_type must be a string"),
    ("weighted/density-missing", "two", weighted(combination_type="ties_svd"), ValueError, "needs density"),
    ("weighted/density-zero", "two", weighted(combination_type="dare_ties_svd", density=0), ValueError, "(0, 1]"),
    ("weighted/density-large", "two", weighted(combination_type="magnitude_prune_svd", density=1.5), ValueError,
     "(0, 1]"),
    ("weighted/density-str", "two", weighted(combination_type="ties_svd", density="0.5"), TypeError, "density"),
    ("weighted/density-unused", "two", weighted(density=0.5), ValueError, "keeps every entry"),
    ("weighted/svd-rank-zero", "two", weighted(svd_rank=0), ValueError, "svd_rank must be an integer >= 1"),
    ("weighted/svd-rank-float", "two", weighted(svd_rank=2.5), TypeError, "svd_rank must be an integer"),
    ("weighted/svd-rank-bool", "two", weighted(svd_rank=True), TypeError, "svd_rank must be an integer"),
    ("weighted/svd-rank-cat", "two", weighted(combination_type="cat", svd_rank=2), ValueError,
     "'...svd' combination types only"),
    ("weighted/svd-rank-too-large", "two", weighted(svd_rank=100), ValueError, "exceeds the size"),
    ("weighted/sign-unknown", "two", weighted(combination_type="ties_svd", density=0.5, majority_sign_method="mass"),
     ValueError, "majority_sign_method must be one of"),
    ("weighted/sign-unused", "two", weighted(combination_type="dare_linear_svd", density=0.5,
                                            majority_sign_method="frequency"), ValueError, "elects no sign"),
    ("weighted/linear-ranks", "two", weighted(combination_type="linear"), ValueError, "same rank"),
    ("weighted/saved-from-unknown", "two", weighted(modules_to_save_from="c"), UnknownAdapterError,
     "no adapter named 'c'"),
    ("weighted/saved-from-type", "two", weighted(modules_to_save_from=3), TypeError, "modules_to_save_from"),
    ("weighted/merged", "merged", weighted(), ValueError, "merged"),
    ("weighted/dora", "dora", weighted(adapters=["a", "d"]), ValueError, "use DoRA"),
    # merge_adapter, unmerge_adapter, merge_and_unload, unload
    ("merge/unknown", "two", lambda m, A: ml.merge_adapter(m, adapter_names=["defualt"]), UnknownAdapterError,
     "no adapter named 'defualt'"),
    ("merge/unknown-beside-known", "two", lambda m, A: ml.merge_adapter(m, adapter_names=["a", "c"]),
     UnknownAdapterError, "'c'"),
    ("merge/str", "two", lambda m, A: ml.merge_adapter(m, adapter_names="a"), TypeError, "list of adapter names"),
    ("merge/empty", "two", lambda m, A: ml.merge_adapter(m, adapter_names=[]), ValueError, "adapter_names is empty"),
    ("merge/twice", "two", lambda m, A: ml.merge_adapter(m, adapter_names=["a", "a"]), ValueError, "named twice"),
    ("merge/disabled", "disabled", lambda m, A: ml.merge_adapter(m), ValueError, "switched off"),
    ("merge/no-lora", "plain", lambda m, A: ml.merge_adapter(m), ValueError, "no LoRA layers"),
    ("unmerge/no-lora", "plain", lambda m, A: ml.unmerge_adapter(m), ValueError, "no LoRA layers"),
    ("merge-and-unload/unknown", "two", lambda m, A: ml.merge_and_unload(m, adapter_names=["defualt"]),
     UnknownAdapterError, "no adapter named 'defualt'"),
    ("merge-and-unload/str", "two", lambda m, A: ml.merge_and_unload(m, adapter_names="b"), TypeError,
     "list of adapter names"),
    ("merge-and-unload/empty", "two", lambda m, A: ml.merge_and_unload(m, adapter_names=()), ValueError, "empty"),
    ("merge-and-unload/disabled", "disabled", lambda m, A: ml.merge_and_unload(m), ValueError, "switched off"),
    ("merge-and-unload/no-lora", "plain", lambda m, A: ml.merge_and_unload(m), ValueError, "no LoRA layers"),
    ("unload/no-lora", "plain", lambda m, A: ml.unload(m), ValueError, "no LoRA layers"),
    # mark_only_lora_as_trainable
    ("mark/bias-value", "two", lambda m, A: ml.mark_only_lora_as_trainable(m, "some"), ValueError, "bias must be"),
    ("mark/bias-type", "two", lambda m, A: ml.mark_only_lora_as_trainable(m, None), TypeError, "bias must be"),
    ("mark/no-lora", "plain", lambda m, A: ml.mark_only_lora_as_trainable(m), ValueError, "no LoRA layers"),
    # enable_adapter_layers, disable_adapter_layers
    ("disable-layers/merged", "merged", lambda m, A: ml.disable_adapter_layers(m), ValueError, "unmerge_adapter"),
    ("disable-layers/no-lora", "plain", lambda m, A: ml.disable_adapter_layers(m), ValueError, "no LoRA layers"),
    ("enable-layers/no-lora", "plain", lambda m, A: ml.enable_adapter_layers(m), ValueError, "no LoRA layers"),
    # the read-only combination_report refuses the same inputs
    ("report/unknown", "two", lambda m, A: combination_report(m, "mix", ["a", "b"], [1, 1]), UnknownAdapterError,
     "'mix'"),
    ("report/weights", "two", lambda m, A: combination_report(m, "a", ["a", "b"], [1]), ValueError, "one weight"),
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # r >= a layer's size, a single adapter combined linearly
@pytest.mark.parametrize("arch", ARCH)
@pytest.mark.parametrize("case, state, call, error, fragment", CASES, ids=[c[0] for c in CASES])
def test_a_refused_call_changes_nothing(case, state, call, error, fragment, arch, tiny):
    model = build(tiny, arch, state)
    before = snapshot.take(model)
    with pytest.raises(error) as info:
        call(model, ARCH[arch])
    assert fragment in str(info.value), f"{case}: {info.value}"
    snapshot.assert_same(before, model)


# ----- the four bugs of the outside reading, as it reproduced them (tiny BERT) ---------------------------
def test_bug1_a_misspelt_module_to_save_leaves_the_model_untouched_and_the_retry_works(tiny):
    model = tiny.bert()
    before = snapshot.take(model)
    with pytest.raises(ValueError, match=r"modules_to_save='clasifier' matched no module; did you mean \['classif"):
        ml.inject_lora(model, ml.LoRAConfig(target_modules=["query", "value"], modules_to_save=["clasifier"]))
    snapshot.assert_same(before, model)  # no LoRA layers, no peft_config, nothing made trainable
    ml.inject_lora(model, ml.LoRAConfig(target_modules=["query", "value"], modules_to_save=["classifier"]))
    assert list_adapters(model) == ["default"] and isinstance(model.classifier, ModulesToSaveWrapper)


def test_bug2_merge_and_unload_refuses_a_misspelt_adapter_instead_of_dropping_the_adapter(tiny):
    model = ml.inject_lora(tiny.bert(), ml.LoRAConfig(target_modules=["query", "value"]))
    tiny.as_if_trained(model)
    adapted = tiny.logits(model)
    before = snapshot.take(model)
    with pytest.raises(UnknownAdapterError, match="no adapter named 'defualt' in the model; it has \\['default'\\]"):
        ml.merge_and_unload(model, adapter_names=["defualt"])
    with pytest.raises(KeyError):  # an UnknownAdapterError is a KeyError and a ValueError
        ml.merge_adapter(model, adapter_names=["defualt"])
    snapshot.assert_same(before, model)
    plain = ml.merge_and_unload(model, adapter_names=["default"])
    torch.testing.assert_close(tiny.logits(plain), adapted, atol=1e-5, rtol=0)  # the trained adapter is kept


def test_bug3_a_new_adapter_on_a_merged_model_is_refused_before_any_layer_registers_it(tiny):
    model = ml.inject_lora(tiny.bert(), ml.LoRAConfig(target_modules=["query", "value"]))
    ml.merge_adapter(model)
    before = snapshot.take(model)
    with pytest.raises(ValueError, match=r"adapters \['default'\] are merged into the base weights; call "
                                         r"minilora.unmerge_adapter\(model\) before adding an adapter"):
        ml.inject_lora(model, ml.LoRAConfig(target_modules=["query", "value"]), "second")
    snapshot.assert_same(before, model)
    assert all("second" not in layer.r for _, layer in ml.lora_layers(model))
    ml.inject_lora(ml.unmerge_adapter(model), ml.LoRAConfig(target_modules=["query", "value"]), "second")
    assert list_adapters(model) == ["default", "second"]


def test_bug4_a_module_both_targeted_and_saved_is_refused_at_inject(tiny):
    model = tiny.bert()
    before = snapshot.take(model)
    with pytest.raises(ValueError, match=r"selects 'classifier', which is a LoRA target .* exclude_modules=\['classif"):
        ml.inject_lora(model, ml.LoRAConfig(target_modules=["query", "classifier"], modules_to_save=["classifier"]))
    with pytest.raises(ValueError, match="selects 'bert.pooler', which contains 'bert.pooler.dense', a LoRA target"):
        ml.inject_lora(model, ml.LoRAConfig(target_modules=["dense"], modules_to_save=["pooler"]))
    with pytest.raises(ValueError, match="which contains the saved module 'bert.pooler.dense'"):
        ml.inject_lora(model, ml.LoRAConfig(target_modules=["query"], modules_to_save=["pooler", "pooler.dense"]))
    snapshot.assert_same(before, model)


# ----- inject_lora is transactional: a failure half-way puts everything back --------------------------
class _FailingInit(LoraVariant):
    """A variant (the layer's real extension point) whose initialisation fails, as a buggy plug-in would."""

    def init(self, layer, adapter_name, **kwargs):
        raise RuntimeError("the plug-in failed")


class _PluginLinear(LoRALinear):
    def resolve_lora_variant(self, **kwargs):
        if kwargs.get("init_lora_weights") == "gaussian":
            return _FailingInit()
        return super().resolve_lora_variant(**kwargs)


def test_inject_rolls_back_when_a_layer_fails_half_way(tiny):
    model = ml.inject_lora(tiny.bert(), ml.LoRAConfig(target_modules=["query", "value"]), "a")
    tiny.as_if_trained(model)
    last = model.bert.encoder.layer[1].attention.self.value
    last.__class__ = _PluginLinear  # the last target: every other layer has changed when it fails
    before, logits = snapshot.take(model), tiny.logits(model)
    config = ml.LoRAConfig(target_modules=["query", "key", "value"], init_lora_weights="gaussian",
                           modules_to_save=["classifier"])
    with pytest.raises(RuntimeError, match="the plug-in failed"):
        add_adapter(model, "b", config)
    snapshot.assert_same(before, model)  # the key layers unwrapped, b gone from query and value, peft_config as it was
    torch.testing.assert_close(tiny.logits(model), logits)


def test_inject_rolls_back_when_a_module_to_save_cannot_be_copied(tiny):
    model = tiny.bert()
    model.classifier.lock = threading.Lock()  # deepcopy fails on it, after the LoRA layers were added
    before = snapshot.take(model)
    with pytest.raises(TypeError, match="pickle"):
        ml.inject_lora(model, ml.LoRAConfig(target_modules=["query", "value"], modules_to_save=["classifier"]))
    snapshot.assert_same(before, model)
    assert not list(ml.lora_layers(model)) and not hasattr(model, "peft_config")


def test_pissa_rolls_back_the_base_weights_it_rewrote(tiny):
    model = tiny.bert()
    model.classifier.lock = threading.Lock()
    before = snapshot.take(model)
    with pytest.raises(TypeError, match="pickle"):
        ml.inject_lora(model, ml.LoRAConfig(r=2, target_modules=["query"], init_lora_weights="pissa_niter_2",
                                            modules_to_save=["classifier"]))
    snapshot.assert_same(before, model)  # the residual W - sBA was written into each query weight, and put back


# ----- an adapter absent from some layers is fine for those layers ------------------------------------
def test_a_known_adapter_absent_from_some_layers_merges_where_it_is(tiny):
    base = tiny.llama()
    model = build(tiny, "llama", "two")  # b adapts v_proj and down_proj, not q_proj
    set_adapter(model, ["a", "b"])
    stacked = tiny.logits(model)
    ml.merge_adapter(model, adapter_names=["b"])
    assert model.model.layers[0].mlp.down_proj.merged_adapters == ["b"]
    assert model.model.layers[0].self_attn.q_proj.merged_adapters == []
    torch.testing.assert_close(tiny.logits(model), stacked, atol=1e-5, rtol=0)
    plain = ml.merge_and_unload(model, adapter_names=["a", "b"])
    torch.testing.assert_close(tiny.logits(plain), stacked, atol=1e-5, rtol=0)
    assert (tiny.logits(plain) - tiny.logits(base)).abs().max() > 1e-3


# ----- enable_adapter_layers / disable_adapter_layers, against PEFT --------------------------------------
def _trainable(model, prefix=""):
    return {n.removeprefix(prefix) for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_disable_and_enable_adapter_layers_agree_with_peft(arch, tiny):
    base = tiny.make[arch]()
    targets, head = ARCH[arch]["a"], ARCH[arch]["head"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = tiny.as_if_trained(tiny.peft(base, targets, modules_to_save=[head]))
    mine = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, lora_alpha=8, target_modules=targets,
                                                             modules_to_save=[head]))
    mine.load_state_dict({k.removeprefix("base_model.model."): v for k, v in pm.state_dict().items()})
    adapted, trainable = tiny.logits(mine), _trainable(mine)
    torch.testing.assert_close(adapted, tiny.logits(pm), atol=1e-5, rtol=0)
    assert (adapted - tiny.logits(base)).abs().max() > 1e-3

    assert ml.disable_adapter_layers(mine) is mine
    pm.base_model.disable_adapter_layers()
    torch.testing.assert_close(tiny.logits(mine), tiny.logits(base), atol=1e-6, rtol=0)
    torch.testing.assert_close(tiny.logits(pm), tiny.logits(base), atol=1e-6, rtol=0)
    assert _trainable(mine) == _trainable(pm, "base_model.model.") == set()  # adapters and saved copies frozen
    ml.mark_only_lora_as_trainable(mine)  # stays frozen while off
    assert _trainable(mine) == set()

    assert ml.enable_adapter_layers(mine) is mine
    pm.base_model.enable_adapter_layers()
    torch.testing.assert_close(tiny.logits(mine), adapted, atol=0, rtol=0)
    torch.testing.assert_close(tiny.logits(pm), adapted, atol=1e-5, rtol=0)
    assert _trainable(mine) == _trainable(pm, "base_model.model.") == trainable


def test_disabled_layers_persist_until_enabled_and_the_context_manager_restores_them(tiny):
    base = tiny.bert()
    model = build(tiny, "bert", "two")
    adapted = tiny.logits(model)
    ml.disable_adapter_layers(model)
    with ml.disable_adapter(model):
        torch.testing.assert_close(tiny.logits(model), tiny.logits(base), atol=1e-6, rtol=0)
    torch.testing.assert_close(tiny.logits(model), tiny.logits(base), atol=1e-6, rtol=0)  # still off
    set_adapter(ml.enable_adapter_layers(model), "a")
    torch.testing.assert_close(tiny.logits(model), adapted)


def test_disable_adapter_layers_warns_when_biases_were_trained(tiny):
    model = ml.inject_lora(tiny.bert(), ml.LoRAConfig(target_modules=["query"], bias="all"))
    with pytest.warns(UserWarning, match="trained biases"):
        ml.disable_adapter_layers(model)


# ----- every mutator returns the model -------------------------------------------------------------------
def test_every_mutator_returns_the_model(tiny):
    model = tiny.bert()
    assert ml.inject_lora(model, cfg_a("bert"), "a") is model
    assert add_adapter(model, "b", cfg_b("bert")) is model
    assert set_adapter(model, ["a", "b"]) is model
    assert ml.mark_only_lora_as_trainable(model) is model
    assert add_weighted_adapter(model, ["a", "b"], [1.0, 1.0], "ab", combination_type="cat") is model
    assert delete_adapter(model, "ab") is model
    assert ml.disable_adapter_layers(model) is model and ml.enable_adapter_layers(model) is model
    assert ml.merge_adapter(model) is model and ml.unmerge_adapter(model) is model
    kept = copy.deepcopy(model)
    assert ml.unload(kept) is kept and ml.merge_and_unload(model) is model
    assert not any(isinstance(m, (LoRALinear, ModulesToSaveWrapper)) for m in model.modules())


def test_a_model_that_is_not_a_module_is_a_type_error():
    for call in (lambda: ml.inject_lora("bert", ml.LoRAConfig()), lambda: ml.merge_and_unload(None),
                 lambda: ml.disable_adapter_layers([nn.Linear(2, 2)])):
        with pytest.raises(TypeError, match="nn.Module"):
            call()
