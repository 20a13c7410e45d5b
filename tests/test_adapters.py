"""Several adapters on one model: swap, stack, disable, delete, train one, weighted merges."""
import copy
import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model

import minilora as ml
from minilora.adapters import (active_adapters, add_adapter, add_weighted_adapter, delete_adapter, list_adapters,
                               set_adapter)
from minilora.inject import ModulesToSave
from minilora.io import load_adapter, save_adapter
from minilora.layers import LoRAEmbedding, LoRALinear
from test_inject import IDS, logits, tiny_bert, tiny_gpt2, tiny_llama
from test_io import as_if_trained

CFG = {"a": ml.LoRAConfig(r=4, alpha=8, target_modules=["embed_tokens", "q_proj", "v_proj"]),
       "b": ml.LoRAConfig(r=2, alpha=8, target_modules=["v_proj", "down_proj"]),
       "c": ml.LoRAConfig(r=3, alpha=3, target_modules=["q_proj"], use_rslora=True)}


def three_adapters(make=tiny_llama, cfgs=CFG):
    """A tiny model with adapters a, b, c (different ranks and targets), each with non-zero B."""
    base = make()
    model = copy.deepcopy(base)
    for i, (name, cfg) in enumerate(cfgs.items()):
        add_adapter(model, cfg, name)
        set_adapter(model, name)
        as_if_trained(model, seed=i)
    return base, model


def by_hand(base, model, weights):
    """The base with ``sum_i w_i * delta_weight(i)`` added to each weight: what LoRA should compute."""
    ref = copy.deepcopy(base)
    with torch.no_grad():
        for name, layer in ml.lora_layers(model):
            w = ref.get_submodule(name).weight
            for adapter, wt in weights.items():
                if adapter in layer.adapters:
                    w += wt * layer.delta_weight(adapter)
    return ref


def test_list_swap_and_stack_equal_the_hand_computed_models():
    base, model = three_adapters()
    assert list_adapters(model) == ["a", "b", "c"] and active_adapters(model) == ["c"]
    for names in ("a", "b", "c", ["a", "b"], ["b", "a", "c"]):
        set_adapter(model, names)
        names = [names] if isinstance(names, str) else names
        assert active_adapters(model) == sorted(names)
        torch.testing.assert_close(logits(model), logits(by_hand(base, model, {n: 1.0 for n in names})),
                                   atol=1e-5, rtol=0)
    assert (logits(by_hand(base, model, {"a": 1})) - logits(by_hand(base, model, {"b": 1}))).abs().max() > 1e-2


def test_swap_with_conv1d_layers():
    cfgs = {"a": ml.LoRAConfig(r=4, target_modules=["c_attn"]), "b": ml.LoRAConfig(r=2, target_modules=["c_attn", "c_fc"])}
    base, model = three_adapters(tiny_gpt2, cfgs)
    for names in ("a", ["a", "b"]):
        set_adapter(model, names)
        names = [names] if isinstance(names, str) else names
        torch.testing.assert_close(logits(model), logits(by_hand(base, model, {n: 1.0 for n in names})),
                                   atol=1e-5, rtol=0)


def test_disable_lora_with_several_active_adapters():
    base, model = three_adapters()
    set_adapter(model, ["a", "b", "c"])
    stacked = logits(model)
    with ml.disable_lora(model):
        torch.testing.assert_close(logits(model), logits(base), atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(model), stacked)


def test_training_one_adapter_freezes_the_others():
    base = tiny_bert()
    model = copy.deepcopy(base)
    for name in ("a", "b"):
        add_adapter(model, ml.LoRAConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"]), name)
    set_adapter(model, "b")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".b." in n or n.endswith(".b") for n in trainable)
    assert {n for n in trainable if "classifier" in n} == {"classifier.modules_to_save.b.weight",
                                                           "classifier.modules_to_save.b.bias"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(input_ids=IDS, labels=torch.tensor([0, 2])).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any(".lora_B.b" in n for n in changed)


def test_add_adapter_keeps_the_active_one_and_delete_unwraps():
    base = tiny_llama()
    model = ml.inject_lora(copy.deepcopy(base), CFG["c"], "c")
    as_if_trained(model)
    only_c = logits(model)
    add_adapter(model, CFG["a"], "a")  # q_proj layers hold c (active) and a; embed_tokens holds only a
    assert active_adapters(model) == ["c"] and model.model.embed_tokens.active_adapters == []
    torch.testing.assert_close(logits(model), only_c)
    delete_adapter(model, "c")
    assert list_adapters(model) == ["a"] and active_adapters(model) == []
    assert isinstance(model.model.layers[0].self_attn.q_proj, LoRALinear)
    delete_adapter(model, "a")
    assert not list(ml.lora_layers(model)) and not hasattr(model, "lora_configs")
    torch.testing.assert_close(logits(model), logits(base))


def test_delete_restores_the_original_head():
    base = tiny_bert()
    model = ml.inject_lora(copy.deepcopy(base), ml.LoRAConfig(r=4, target_modules=["query"], modules_to_save=["classifier"]))
    as_if_trained(model)
    delete_adapter(model, "default")
    assert not isinstance(model.classifier, ModulesToSave)
    torch.testing.assert_close(logits(model), logits(base))


def test_merge_and_unload_folds_the_stacked_adapters():
    base, model = three_adapters()
    set_adapter(model, ["a", "c"])
    expected = logits(by_hand(base, model, {"a": 1.0, "c": 1.0}))
    ml.merge(model)
    with pytest.raises(RuntimeError, match="unmerge"):
        set_adapter(model, "b")
    with pytest.raises(RuntimeError, match="unmerge"):
        delete_adapter(model, "a")
    ml.unmerge(model)
    plain = ml.merge_and_unload(model)
    assert not any(isinstance(m, (LoRALinear, LoRAEmbedding)) for m in plain.modules())
    torch.testing.assert_close(logits(plain), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [0.7, -0.4, 2.0]])
def test_linear_weighted_adapter_is_exact(weights):
    base, model = three_adapters()
    report = add_weighted_adapter(model, ["a", "b", "c"], weights, "mix")
    assert report.rank == 4 + 2 + 3 and report.relative_error < 1e-6
    assert active_adapters(model) == ["c"]  # the new adapter starts inactive
    set_adapter(model, "mix")
    expected = logits(by_hand(base, model, dict(zip("abc", weights))))
    torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=0)
    if weights == [1.0, 1.0, 1.0]:  # weights 1: the same as stacking
        set_adapter(model, ["a", "b", "c"])
        torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=0)


def test_linear_equals_peft_cat_not_peft_linear():
    base = tiny_llama()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        pm.add_adapter("b", LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
        pm.base_model.set_adapter(["default", "b"])
        as_if_trained(pm)
        model, sd = copy.deepcopy(base), pm.state_dict()  # copy PEFT's two adapters into minilora
        for name, r, alpha in (("default", 4, 8), ("b", 4, 4)):
            add_adapter(model, ml.LoRAConfig(r=r, alpha=alpha, target_modules=["q_proj", "v_proj"]), name)
            for lname, layer in ml.lora_layers(model):
                with torch.no_grad():
                    layer.lora_A[name].copy_(sd[f"base_model.model.{lname}.lora_A.{name}.weight"])
                    layer.lora_B[name].copy_(sd[f"base_model.model.{lname}.lora_B.{name}.weight"])
        for kind in ("cat", "linear"):
            pm.add_weighted_adapter(["default", "b"], [0.6, 0.3], kind, combination_type=kind)
    add_weighted_adapter(model, ["default", "b"], [0.6, 0.3], "mix")
    set_adapter(model, "mix")
    pm.set_adapter("cat")
    torch.testing.assert_close(logits(model), logits(pm), atol=1e-5, rtol=0)
    pm.set_adapter("linear")
    assert (logits(model) - logits(pm)).abs().max() > 1e-3  # PEFT's "linear" has cross terms B_i A_j


def test_svd_weighted_adapter_reports_the_eckart_young_error():
    base, model = three_adapters()
    with torch.no_grad():
        target = {n: sum(w * layer.delta_weight(a).double() for a, w in (("a", 0.5), ("c", 0.5)) if a in layer.adapters)
                  for n, layer in ml.lora_layers(model) if {"a", "c"} & set(layer.adapters)}
    errors = []
    for k in (1, 2, 4, 7):
        rep = add_weighted_adapter(model, ["a", "c"], [0.5, 0.5], f"svd{k}", combination="svd", rank=k)
        tail = sum(float((torch.linalg.svdvals(d)[k:] ** 2).sum()) for d in target.values())
        assert rep.relative_error == pytest.approx((tail / sum(float((d ** 2).sum()) for d in target.values())) ** 0.5,
                                                   rel=1e-5, abs=1e-6)  # A, B are float32
        for name, layer in ml.lora_layers(model):
            if name in target:
                got = layer.delta_weight(f"svd{k}").double()
                assert float((got - target[name]).norm() / target[name].norm()) == pytest.approx(rep.layer_errors[name],
                                                                                                   abs=1e-6)
        errors.append(rep.relative_error)
    assert errors == sorted(errors, reverse=True) and errors[0] > 0.1 and errors[-1] < 1e-6  # 4 + 3 = 7: exact


def test_weighted_adapters_and_saved_heads(tmp_path):
    base = tiny_bert()
    model = copy.deepcopy(base)
    cfg = ml.LoRAConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"])
    for name in ("a", "b"):
        add_adapter(model, cfg, name)
        set_adapter(model, name)
        as_if_trained(model, seed=len(name) + ord(name))
    with pytest.raises(ValueError, match=r"adapters \['a', 'b'\] each have their own copy of 'classifier'"):
        set_adapter(model, ["a", "b"])
    with pytest.raises(ValueError, match="modules_to_save_from=<one of them>"):
        add_weighted_adapter(model, ["a", "b"], [1, 1], "ab")
    add_weighted_adapter(model, ["b"], [1.0], "b_lora", modules_to_save_from=None)  # b's update, no head
    set_adapter(model, ["a", "b_lora"])  # a's head, a + b's updates
    ref = by_hand(base, model, {"a": 1.0, "b": 1.0})
    ref.classifier = copy.deepcopy(model.classifier.modules_to_save["a"])
    torch.testing.assert_close(logits(model), logits(ref), atol=1e-5, rtol=0)
    rep = add_weighted_adapter(model, ["a"], [1.0], "a_r2", combination="svd", rank=2)  # "auto": a's head
    assert torch.equal(model.classifier.modules_to_save["a_r2"].weight, model.classifier.modules_to_save["a"].weight)
    assert 0 < rep.relative_error < 1
    save_adapter(model, tmp_path, "a_r2")  # a weighted adapter is an ordinary adapter: it saves and loads
    set_adapter(model, "a_r2")
    torch.testing.assert_close(logits(load_adapter(copy.deepcopy(base), tmp_path)), logits(model), atol=1e-6, rtol=0)


@pytest.mark.parametrize("call, error, fragment", [
    (lambda m: set_adapter(m, "z"), ValueError, r"no adapter named 'z'; the model has \['a', 'b', 'c'\]"),
    (lambda m: set_adapter(m, []), ValueError, "disable_lora"),
    (lambda m: set_adapter(m, ["a", "a"]), ValueError, "named twice"),
    (lambda m: delete_adapter(m, "z"), ValueError, "no adapter named 'z'"),
    (lambda m: add_weighted_adapter(m, ["a", "b"], [1.0], "x"), ValueError, "one weight per adapter"),
    (lambda m: add_weighted_adapter(m, ["a"], [1.0], "b"), ValueError, "already has an adapter named 'b'"),
    (lambda m: add_weighted_adapter(m, ["a"], [1.0], "x", combination="ties"), ValueError, "combination must be"),
    (lambda m: add_weighted_adapter(m, ["a"], [1.0], "x", rank=2), ValueError, "rank is only for"),
    (lambda m: add_weighted_adapter(m, ["a"], [1.0], "x", combination="svd"), ValueError, "needs rank"),
    (lambda m: add_weighted_adapter(m, ["a"], [1.0], "x", combination="svd", rank=40), ValueError, "exceeds the size"),
    (lambda m: add_adapter(m, CFG["a"], "a"), ValueError, "already has an adapter named 'a'"),
])
def test_bad_calls(call, error, fragment):
    _, model = three_adapters()
    with pytest.raises(error, match=fragment):
        call(model)
    assert list_adapters(model) == ["a", "b", "c"]


def test_no_adapters_yet():
    with pytest.raises(ValueError, match="has no adapters"):
        set_adapter(tiny_bert(), "a")
