"""Intruder dimensions (minilora.intruders, chapter 14) against PEFT's reduce_intruder_dimension."""
import copy
import warnings

import pytest
import torch

import minilora
from minilora import LoRAConfig
from minilora.errors import UnknownAdapterError
from minilora.intruders import intruder_dimensions, reduce_intruder_dimension

TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "bert": ["query", "value", "dense"]}


def trained(tiny, arch, r=4, scale=1.0, **kw):
    """A tiny model with adapter "default" whose B is large enough to create intruders."""
    model = tiny.make[arch]()
    minilora.inject_lora(model, LoRAConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS[arch], **kw))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, layer in minilora.lora_layers(model):
            A, B = layer.factors("default")
            B.copy_(scale * torch.randn(B.shape, generator=g))
            A.copy_(scale * torch.randn(A.shape, generator=g) / A.shape[1] ** 0.5)
    return model.eval()


def peft_twin(model, tmp_path):
    from peft import PeftModel

    base = copy.deepcopy(model)
    minilora.save_adapter(model, tmp_path)
    minilora.unload(base)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(base, tmp_path).eval()


def deltas(model, name):
    return {path: layer.get_delta_weight(name) for path, layer in minilora.lora_layers(model)}


@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("top_k, eps, lam", [(10, 0.5, 0.75), (4, 0.45, 0.0), (16, 0.7, 0.5)])
def test_equal_to_peft(tiny, tmp_path, arch, top_k, eps, lam):
    from peft.tuners.lora.intruders import reduce_intruder_dimension as peft_reduce

    model = trained(tiny, arch)
    pm = peft_twin(model, tmp_path)
    ours_log, theirs_log = [], []
    reduce_intruder_dimension(model, top_k=top_k, threshold_epsilon=eps, mitigation_lambda=lam,
                              logging_sink=ours_log.append)
    peft_reduce(pm, top_k=top_k, threshold_epsilon=eps, mitigation_lambda=lam, logging_sink=theirs_log.append)
    assert [line.split(": ")[-1] for line in ours_log] == [line.split(": ")[-1] for line in theirs_log]
    assert any("Intruders:" in line for line in ours_log)  # the setting does find some
    inner = pm.base_model.model
    for path, delta in deltas(model, "intruder_reduced").items():
        theirs = inner.get_submodule(path).get_delta_weight("intruder_reduced")
        torch.testing.assert_close(delta, theirs, atol=1e-5, rtol=1e-4)
    assert minilora.active_adapters(model) == ["intruder_reduced"] == pm.active_adapters
    with torch.no_grad():
        torch.testing.assert_close(tiny.logits(model), pm(input_ids=tiny.IDS).logits, atol=1e-4, rtol=1e-4)


def test_lambda_one_changes_nothing_and_a_larger_lambda_keeps_more(tiny):
    distances = []
    for lam in (0.0, 0.5, 1.0):
        model = trained(tiny, "llama")
        old = deltas(model, "default")
        reduce_intruder_dimension(model, mitigation_lambda=lam, logging_sink=None)
        new = deltas(model, "intruder_reduced")
        distances.append(sum((new[p] - old[p]).norm().item() for p in old))
    assert distances[0] > distances[1] > 0
    assert distances[2] < 1e-3 * distances[0]  # lambda = 1: the same update, up to the SVD's rounding


def test_detection_finds_a_planted_direction():
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    V, _ = torch.linalg.qr(torch.randn(10, 10, generator=g))
    W = U[:, :10] @ torch.diag(torch.linspace(3, 1, 10)) @ V.T  # (12, 10): its left singular vectors are U[:, :10]
    planted = 10 * torch.outer(U[:, 11], V[:, 0])  # strong, and orthogonal to every one of them
    idx, cos = intruder_dimensions(W, W + planted, top_k=3, threshold_epsilon=0.5)
    assert idx == [0] and cos[1:3].min() > 0.5  # only the top direction is new
    assert intruder_dimensions(W, W * 1.01, top_k=3)[0] == []  # a rescaled W has no intruders


def test_gpt2_conv1d_and_heads(tiny):
    """Conv1D (weights stored (in, out)) works in B @ A's orientation; the trained head is carried over."""
    model = tiny.gpt2()
    minilora.inject_lora(model, LoRAConfig(r=4, target_modules=["c_attn", "c_fc"], modules_to_save=["lm_head"]))
    tiny.as_if_trained(model)
    with torch.no_grad():
        for _, layer in minilora.lora_layers(model):
            layer.factors("default")[1].mul_(20)
    reduce_intruder_dimension(model, mitigation_lambda=1.0, logging_sink=None)
    for path, layer in minilora.lora_layers(model):
        torch.testing.assert_close(layer.get_delta_weight("intruder_reduced"), layer.get_delta_weight("default"),
                                   atol=1e-4, rtol=1e-3)
    head = model.lm_head
    assert torch.equal(head.modules_to_save["intruder_reduced"].weight, head.modules_to_save["default"].weight)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, list(getattr(model, "peft_config", {}))


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(old_adapter_name="defualt"), UnknownAdapterError, "defualt"),
    (dict(new_adapter_name="default"), ValueError, "already"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(mitigation_lambda="high"), TypeError, "mitigation_lambda"),
    (dict(logging_sink="stdout"), TypeError, "logging_sink"),
])
def test_refusals_change_nothing(tiny, kwargs, error, words):
    model = trained(tiny, "llama")
    before = state(model)
    with pytest.raises(error, match=words):
        reduce_intruder_dimension(model, **kwargs)
    after = state(model)
    assert after[1] == before[1] and all(torch.equal(after[0][k], v) for k, v in before[0].items())


def test_dora_and_merged_are_refused(tiny):
    model = trained(tiny, "llama", use_dora=True)
    with pytest.raises(ValueError, match="DoRA"):
        reduce_intruder_dimension(model, logging_sink=None)
    assert minilora.list_adapters(model) == ["default"]
    model = trained(tiny, "llama")
    minilora.merge_adapter(model)
    with pytest.raises(ValueError, match="merged"):
        reduce_intruder_dimension(model, logging_sink=None)
