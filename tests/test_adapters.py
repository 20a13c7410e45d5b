"""Several adapters on one model: swap, stack, disable, delete, train one, weighted merges (PEFT's
combination types, checked against PEFT's own add_weighted_adapter)."""
import copy
import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model

import minilora as ml
from minilora.adapters import (
    active_adapters,
    add_adapter,
    add_weighted_adapter,
    combination_report,
    delete_adapter,
    list_adapters,
    set_adapter,
)
from minilora.embedding import LoRAEmbedding
from minilora.errors import UnknownAdapterError
from minilora.io import load_adapter, save_adapter
from minilora.layers import LoRALinear
from minilora.modules_to_save import ModulesToSaveWrapper

CFG = {"a": ml.LoRAConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj", "v_proj"]),
       "b": ml.LoRAConfig(r=2, lora_alpha=8, target_modules=["v_proj", "down_proj"]),
       "c": ml.LoRAConfig(r=3, lora_alpha=3, target_modules=["q_proj"], use_rslora=True)}


@pytest.fixture
def three_adapters(tiny):
    """``make(arch="llama", cfgs=CFG)``: a tiny model with adapters a, b, c (different ranks and
    targets), each with non-zero B; returns (base, model)."""
    def make(arch="llama", cfgs=CFG):
        base = tiny.make[arch]()
        model = copy.deepcopy(base)
        for i, (name, cfg) in enumerate(cfgs.items()):
            add_adapter(model, name, cfg)
            set_adapter(model, name)
            tiny.as_if_trained(model, seed=i)
        return base, model
    return make


def combine(model, adapters, weights, adapter_name, *args, **kwargs):
    """``add_weighted_adapter`` (which returns the model), then the read-only ``combination_report``."""
    assert add_weighted_adapter(model, adapters, weights, adapter_name, *args, **kwargs) is model
    return combination_report(model, adapter_name, adapters, weights)


def by_hand(base, model, weights):
    """The base with ``sum_i w_i * get_delta_weight(i)`` added to each weight: what LoRA should compute."""
    ref = copy.deepcopy(base)
    with torch.no_grad():
        for name, layer in ml.lora_layers(model):
            w = ref.get_submodule(name).weight
            for adapter, wt in weights.items():
                if adapter in layer.adapters:
                    w += wt * layer.get_delta_weight(adapter)
    return ref


def test_list_swap_and_stack_equal_the_hand_computed_models(tiny, three_adapters):
    base, model = three_adapters()
    assert list_adapters(model) == ["a", "b", "c"] and active_adapters(model) == ["c"]
    for names in ("a", "b", "c", ["a", "b"], ["b", "a", "c"]):
        set_adapter(model, names)
        names = [names] if isinstance(names, str) else names
        assert active_adapters(model) == sorted(names)
        torch.testing.assert_close(tiny.logits(model), tiny.logits(by_hand(base, model, {n: 1.0 for n in names})),
                                   atol=1e-5, rtol=0)
    only_a, only_b = (tiny.logits(by_hand(base, model, {n: 1})) for n in "ab")
    assert (only_a - only_b).abs().max() > 1e-2


def test_swap_with_conv1d_layers(tiny, three_adapters):
    cfgs = {"a": ml.LoRAConfig(r=4, target_modules=["c_attn"]),
            "b": ml.LoRAConfig(r=2, target_modules=["c_attn", "c_fc"])}
    base, model = three_adapters("gpt2", cfgs)
    for names in ("a", ["a", "b"]):
        set_adapter(model, names)
        names = [names] if isinstance(names, str) else names
        torch.testing.assert_close(tiny.logits(model), tiny.logits(by_hand(base, model, {n: 1.0 for n in names})),
                                   atol=1e-5, rtol=0)


def test_disable_adapter_with_several_active_adapters(tiny, three_adapters):
    base, model = three_adapters()
    set_adapter(model, ["a", "b", "c"])
    stacked = tiny.logits(model)
    with ml.disable_adapter(model):
        torch.testing.assert_close(tiny.logits(model), tiny.logits(base), atol=1e-6, rtol=0)
    torch.testing.assert_close(tiny.logits(model), stacked)


def test_training_one_adapter_freezes_the_others(tiny):
    base = tiny.bert()
    model = copy.deepcopy(base)
    for name in ("a", "b"):
        add_adapter(model, name, ml.LoRAConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"]))
    set_adapter(model, "b")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".b." in n or n.endswith(".b") for n in trainable)
    assert {n for n in trainable if "classifier" in n} == {"classifier.modules_to_save.b.weight",
                                                           "classifier.modules_to_save.b.bias"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(input_ids=tiny.IDS, labels=torch.tensor([0, 2])).loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any(".lora_B.b" in n for n in changed)


def test_add_adapter_keeps_the_active_one_and_delete_unwraps(tiny):
    base = tiny.llama()
    model = ml.inject_lora(copy.deepcopy(base), CFG["c"], "c")
    tiny.as_if_trained(model)
    only_c = tiny.logits(model)
    add_adapter(model, "a", CFG["a"])  # q_proj layers hold c (active) and a; embed_tokens holds only a
    assert active_adapters(model) == ["c"] and model.model.embed_tokens.active_adapters == []
    torch.testing.assert_close(tiny.logits(model), only_c)
    delete_adapter(model, "c")
    assert list_adapters(model) == ["a"] and active_adapters(model) == []
    assert isinstance(model.model.layers[0].self_attn.q_proj, LoRALinear)
    delete_adapter(model, "a")
    assert not list(ml.lora_layers(model)) and not hasattr(model, "peft_config")
    torch.testing.assert_close(tiny.logits(model), tiny.logits(base))


def test_delete_restores_the_original_head(tiny):
    base = tiny.bert()
    config = ml.LoRAConfig(r=4, target_modules=["query"], modules_to_save=["classifier"])
    model = ml.inject_lora(copy.deepcopy(base), config)
    tiny.as_if_trained(model)
    delete_adapter(model, "default")
    assert not isinstance(model.classifier, ModulesToSaveWrapper)
    torch.testing.assert_close(tiny.logits(model), tiny.logits(base))


def test_merge_and_unload_folds_the_stacked_adapters(tiny, three_adapters):
    base, model = three_adapters()
    set_adapter(model, ["a", "c"])
    expected = tiny.logits(by_hand(base, model, {"a": 1.0, "c": 1.0}))
    ml.merge_adapter(model)
    with pytest.raises(ValueError, match="unmerge"):
        set_adapter(model, "b")
    with pytest.raises(ValueError, match="unmerge"):
        delete_adapter(model, "a")
    ml.unmerge_adapter(model)
    plain = ml.merge_and_unload(model)
    assert not any(isinstance(m, (LoRALinear, LoRAEmbedding)) for m in plain.modules())
    torch.testing.assert_close(tiny.logits(plain), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("weights", [[1.0, 1.0, 1.0], [0.7, -0.4, 2.0]])
def test_cat_weighted_adapter_is_exact(weights, tiny, three_adapters):
    base, model = three_adapters()
    report = combine(model, ["a", "b", "c"], weights, "mix", combination_type="cat")
    assert report.rank == 4 + 2 + 3 and report.relative_error < 1e-6
    assert active_adapters(model) == ["c"]  # the new adapter starts inactive
    set_adapter(model, "mix")
    expected = tiny.logits(by_hand(base, model, dict(zip("abc", weights))))
    torch.testing.assert_close(tiny.logits(model), expected, atol=1e-5, rtol=0)
    if weights == [1.0, 1.0, 1.0]:  # weights 1: the same as stacking
        set_adapter(model, ["a", "b", "c"])
        torch.testing.assert_close(tiny.logits(model), expected, atol=1e-5, rtol=0)


def test_linear_has_cross_terms_and_needs_equal_ranks(tiny):
    model = tiny.llama()
    for i, (name, alpha) in enumerate((("p", 8), ("q", 4))):
        add_adapter(model, name, ml.LoRAConfig(r=4, lora_alpha=alpha, target_modules=["q_proj", "v_proj"]))
        set_adapter(model, name)
        tiny.as_if_trained(model, seed=i)
    rep = combine(model, ["p", "q"], [0.6, 0.3], "lin", combination_type="linear")
    assert rep.rank == 4 and rep.relative_error > 0.1  # sum(A) times sum(B) is not the sum of the products
    for name, layer in ml.lora_layers(model):  # exactly PEFT's formula, cross terms included
        parts = [(0.6 * layer.scaling["p"], *layer.factors("p")), (0.3 * layer.scaling["q"], *layer.factors("q"))]
        A = sum(c ** 0.5 * A for c, A, _ in parts)
        B = sum(c ** 0.5 * B for c, _, B in parts)
        torch.testing.assert_close(layer.get_delta_weight("lin"), B @ A, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="needs adapters of the same rank"):
        add_adapter(model, "r2", ml.LoRAConfig(r=2, target_modules=["q_proj"]))
        add_weighted_adapter(model, ["p", "r2"], [1.0, 1.0], "bad", combination_type="linear")


PEFT_TYPES = [("cat", None, None, "total"), ("linear", None, None, "total"), ("svd", None, None, "total"),
              ("svd", 3, None, "total"), ("svd", 12, None, "total"),
              ("ties", None, 0.5, "total"), ("ties", None, 0.3, "frequency"), ("ties_svd", None, 0.5, "total"),
              ("ties_svd", 3, 0.2, "frequency"), ("dare_linear", None, 0.5, "total"),
              ("dare_linear_svd", None, 0.5, "total"), ("dare_ties", None, 0.5, "frequency"),
              ("dare_ties_svd", None, 0.7, "total"), ("magnitude_prune", None, 0.5, "total"),
              ("magnitude_prune_svd", 5, 0.4, "total")]


@pytest.mark.parametrize("combination_type, svd_rank, density, sign", PEFT_TYPES)
@pytest.mark.parametrize("weights", [[0.6, 0.3], [1.0, -0.5]])
def test_weighted_adapter_delta_equals_peft(combination_type, svd_rank, density, sign, weights, tiny):
    """Each combination type's new delta W agrees with PEFT's add_weighted_adapter on the same weights
    (DARE's random drops too: both draw from the global generator, seeded alike, in the same order)."""
    kw = dict(combination_type=combination_type, svd_rank=svd_rank, density=density)
    kw.update(majority_sign_method=sign) if "ties" in combination_type else None
    ranks = (4, 6) if combination_type == "cat" or combination_type.endswith("svd") else (4, 4)
    cfgs = {"default": dict(r=ranks[0], lora_alpha=8, target_modules=["embed_tokens", "q_proj", "v_proj"]),
            "b": dict(r=ranks[1], lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"])}
    base = tiny.llama()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(copy.deepcopy(base), LoraConfig(**cfgs["default"]))
        pm.add_adapter("b", LoraConfig(**cfgs["b"]))
        pm.base_model.set_adapter(["default", "b"])
        tiny.as_if_trained(pm)
        torch.manual_seed(7)
        pm.add_weighted_adapter(["default", "b"], weights, "mix", **kw)
    model = copy.deepcopy(base)
    for name, cfg in cfgs.items():
        add_adapter(model, name, ml.LoRAConfig(**cfg))
    state = {k.removeprefix("base_model.model."): v for k, v in pm.state_dict().items() if ".mix" not in k}
    model.load_state_dict(state)  # PEFT's two adapters, under the very same names
    torch.manual_seed(7)
    rep = combine(model, ["default", "b"], weights, "mix", **kw)
    theirs = dict(pm.base_model.model.named_modules())
    for name, layer in ml.lora_layers(model):
        assert layer.r["mix"] == theirs[name].r["mix"] == rep.rank
        ours, peft = layer.get_delta_weight("mix"), theirs[name].get_delta_weight("mix")
        # to 1e-5 of the largest entry: PEFT's float32 SVD and products round at that level
        torch.testing.assert_close(ours, peft, atol=1e-5 * max(1.0, float(peft.abs().max())), rtol=0)
    exact = combination_type == "cat" or (combination_type == "svd" and svd_rank == 12)
    assert rep.relative_error < 1e-6 if exact else rep.relative_error > 1e-3


def test_one_adapter_is_combined_linearly_as_in_peft(tiny, three_adapters):
    base, model = three_adapters()
    with pytest.warns(UserWarning, match="svd_rank=2 is not applied"):
        rep = combine(model, ["a"], [0.5], "a_half", combination_type="svd", svd_rank=2)
    assert rep.rank == 4 and rep.relative_error < 1e-6  # "linear": exact, at the input's rank
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default svd_rank loses nothing: no warning
        assert combine(model, ["a"], [2.0], "a_twice").relative_error < 1e-6
    rep = combine(model, ["a", "c"], [1.0, 0.0], "a_r2", "svd", svd_rank=2)
    assert rep.rank == 2 and rep.relative_error > 0.05  # combined with another adapter, the SVD truncates


def test_rslora_inputs_are_combined_exactly(tiny, three_adapters):
    base, model = three_adapters()  # c uses rsLoRA; the new adapter has scaling 1 (lora_alpha = r, no rsLoRA)
    rep = combine(model, ["a", "c"], [1.0, 1.0], "ac", combination_type="cat")
    assert model.peft_config["ac"].use_rslora is False and rep.relative_error < 1e-6
    set_adapter(model, "ac")
    torch.testing.assert_close(tiny.logits(model), tiny.logits(by_hand(base, model, {"a": 1.0, "c": 1.0})),
                               atol=1e-5, rtol=0)


def test_svd_weighted_adapter_reports_the_eckart_young_error(three_adapters):
    base, model = three_adapters()
    with torch.no_grad():
        target = {n: sum(w * layer.get_delta_weight(a).double() for a, w in (("a", 0.5), ("c", 0.5))
                         if a in layer.adapters)
                  for n, layer in ml.lora_layers(model) if {"a", "c"} & set(layer.adapters)}
    errors = []
    for k in (1, 2, 4, 7):
        rep = combine(model, ["a", "c"], [0.5, 0.5], f"svd{k}", combination_type="svd", svd_rank=k)
        tail = sum(float((torch.linalg.svdvals(d)[k:] ** 2).sum()) for d in target.values())
        assert rep.relative_error == pytest.approx((tail / sum(float((d ** 2).sum()) for d in target.values())) ** 0.5,
                                                   rel=1e-5, abs=1e-6)  # A, B are float32
        for name, layer in ml.lora_layers(model):
            if name in target:
                got = layer.get_delta_weight(f"svd{k}").double()
                assert float((got - target[name]).norm() / target[name].norm()) == pytest.approx(rep.layer_errors[name],
                                                                                                   abs=1e-6)
        errors.append(rep.relative_error)
    assert errors == sorted(errors, reverse=True) and errors[0] > 0.1 and errors[-1] < 1e-6  # 4 + 3 = 7: exact


def test_weighted_adapters_and_saved_heads(tmp_path, tiny):
    base = tiny.bert()
    model = copy.deepcopy(base)
    cfg = ml.LoRAConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"])
    for name in ("a", "b"):
        add_adapter(model, name, cfg)
        set_adapter(model, name)
        tiny.as_if_trained(model, seed=len(name) + ord(name))
    with pytest.raises(ValueError, match=r"adapters \['a', 'b'\] each have their own copy of 'classifier'"):
        set_adapter(model, ["a", "b"])
    with pytest.raises(ValueError, match="modules_to_save_from=<one of them>"):
        add_weighted_adapter(model, ["a", "b"], [1, 1], "ab")
    add_weighted_adapter(model, ["b"], [1.0], "b_lora", modules_to_save_from=None)  # b's update, no head
    set_adapter(model, ["a", "b_lora"])  # a's head, a + b's updates
    ref = by_hand(base, model, {"a": 1.0, "b": 1.0})
    ref.classifier = copy.deepcopy(model.classifier.modules_to_save["a"])
    torch.testing.assert_close(tiny.logits(model), tiny.logits(ref), atol=1e-5, rtol=0)
    rep = combine(model, ["a", "b_lora"], [1.0, 0.0], "a_r2", combination_type="svd", svd_rank=2)
    assert torch.equal(model.classifier.modules_to_save["a_r2"].weight, model.classifier.modules_to_save["a"].weight)
    assert 0 < rep.relative_error < 1  # "auto": the head of a, the only input that has one
    save_adapter(model, tmp_path, "a_r2")  # a weighted adapter is an ordinary adapter: it saves and loads
    set_adapter(model, "a_r2")
    torch.testing.assert_close(tiny.logits(load_adapter(copy.deepcopy(base), tmp_path)), tiny.logits(model),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("call, error, fragment", [
    (lambda m: set_adapter(m, "z"), UnknownAdapterError,
     r"no adapter named 'z' in the model; it has \['a', 'b', 'c'\]"),
    (lambda m: set_adapter(m, []), ValueError, "disable_adapter"),
    (lambda m: set_adapter(m, ["a", "a"]), ValueError, "named twice"),
    (lambda m: delete_adapter(m, "z"), UnknownAdapterError, "no adapter named 'z'"),
    (lambda m: add_weighted_adapter(m, ["a", "b"], [1.0], "x"), ValueError, "one weight per adapter"),
    (lambda m: add_weighted_adapter(m, ["a"], [1.0], "b"), ValueError, "already has an adapter named 'b'"),
    (lambda m: add_weighted_adapter(m, ["a", "b"], [1, 1], "x", combination_type="mean"), ValueError,
     r"combination_type must be one of \('svd', 'linear', 'cat', 'ties', "),
    (lambda m: add_weighted_adapter(m, ["a", "b"], [1, 1], "x", combination_type="cat", svd_rank=2), ValueError,
     "svd_rank is for the '...svd' combination types only; 'cat' has the rank sum"),
    (lambda m: add_weighted_adapter(m, ["a", "b"], [1, 1], "x", combination_type="ties_svd"), ValueError,
     "'ties_svd' needs density"),
    (lambda m: add_weighted_adapter(m, ["a", "b"], [1, 1], "x", combination_type="dare_ties_svd", density=0),
     ValueError, r"density must be a number in \(0, 1\], got 0. It is the fraction of entries to keep"),
    (lambda m: add_weighted_adapter(m, ["a", "b"], [1, 1], "x", combination_type="magnitude_prune_svd",
                                    density=1.5), ValueError, r"in \(0, 1\], got 1.5"),
    (lambda m: add_weighted_adapter(m, ["a", "b"], [1, 1], "x", density=0.5), ValueError,
     "'svd' keeps every entry"),
    (lambda m: add_weighted_adapter(m, ["a", "b"], [1, 1], "x", combination_type="ties_svd", density=0.5,
                                    majority_sign_method="mass"), ValueError, r"one of \('total', 'frequency'\)"),
    (lambda m: add_weighted_adapter(m, ["a", "b"], [1, 1], "x", combination_type="dare_linear_svd", density=0.5,
                                    majority_sign_method="frequency"), ValueError, "elects no sign"),
    (lambda m: add_weighted_adapter(m, ["a", "b"], [1, 1], "x", combination_type="ties", density=0.5), ValueError,
     "'ties' merges the A's and the B's entry by entry, so it needs adapters of the same rank.*'ties_svd'"),
    (lambda m: add_weighted_adapter(m, ["a", "b"], [1, 1], "x", svd_rank=0), ValueError,
     "svd_rank must be an integer >= 1 or None"),
    (lambda m: add_weighted_adapter(m, ["a", "b"], [1, 1], "x", combination_type="linear"), ValueError,
     "same rank"),
    (lambda m: add_weighted_adapter(m, ["a", "b"], [1, 1], "x", svd_rank=40), ValueError, "exceeds the size"),
    (lambda m: add_adapter(m, "a", CFG["a"]), ValueError, "already has an adapter named 'a'"),
    (lambda m: add_adapter(m, "half", CFG["b"]), ValueError, "'half' is the name of an nn.Module attribute"),
    (lambda m: add_adapter(m, "x.y", CFG["b"]), ValueError, "without dots"),
])
def test_bad_calls(call, error, fragment, three_adapters):
    _, model = three_adapters()
    with pytest.raises(error, match=fragment):
        call(model)
    assert list_adapters(model) == ["a", "b", "c"]


def test_no_adapters_yet(tiny):
    with pytest.raises(ValueError, match="has no adapters"):
        set_adapter(tiny.bert(), "a")
