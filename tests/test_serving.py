"""Mixed-adapter batches (minilora.serving, chapter 13) against PEFT's ``adapter_names=``, and the kernels.

Each model gets three adapters of different ranks, scalings (rsLoRA too) and target sets, saved with
``save_adapter`` and loaded into PEFT from those files, so both sides hold exactly the same numbers.
"""
import copy
import warnings

import pytest
import torch

import minilora
from minilora import LoRAConfig
from minilora.errors import UnknownAdapterError
from minilora.punica import bgmv_expand, bgmv_shrink, segments, sgmv_expand, sgmv_shrink
from minilora.serving import KERNELS, mixed_batch

# Per architecture: (the targets of adapters a, b, c), and the head that a and c save (modules_to_save).
SETUPS = {
    "llama": ((["q_proj", "v_proj"], ["k_proj", "o_proj", "gate_proj"], ["v_proj", "down_proj"]), "lm_head"),
    "gpt2": ((["c_attn"], ["c_attn", "c_proj"], ["c_fc"]), "lm_head"),
    "bert": ((["query", "value"], ["key", "dense"], ["value"]), "classifier"),
}
CONFIGS = (dict(r=4, lora_alpha=8), dict(r=2, lora_alpha=3, use_rslora=True), dict(r=8, lora_alpha=4))
ROWS = ["a", "__base__", "b", "c", "a", "b"]


def build(tiny, arch, saved="abc"):
    """A tiny model with adapters a, b, c ("as if trained"), in eval mode; those in ``saved`` have their own
    copy of the head (modules_to_save)."""
    model = tiny.make[arch]()
    targets, head = SETUPS[arch]
    for name, t, kw in zip("abc", targets, CONFIGS):
        cfg = LoRAConfig(target_modules=t, modules_to_save=[head] if name in saved else None, **kw)
        minilora.add_adapter(model, name, cfg) if name != "a" else minilora.inject_lora(model, cfg, "a")
        minilora.set_adapter(model, name)
    return tiny.as_if_trained(model).eval()


def ids(n=len(ROWS), length=7, seed=5):
    return torch.randint(1, 100, (n, length), generator=torch.Generator().manual_seed(seed))


def as_peft(model, tmp_path):
    """PEFT's model with the same three adapters, read from the files minilora writes."""
    from peft import PeftModel

    base = copy.deepcopy(model)
    minilora.unload(base)
    for name in "abc":
        minilora.save_adapter(model, tmp_path / name, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fan_in_fan_out for GPT-2's Conv1D
        pm = PeftModel.from_pretrained(base, tmp_path / "a", adapter_name="a")
        for name in "bc":
            pm.load_adapter(tmp_path / name, adapter_name=name)
    return pm.eval()


def alone(model, name, x):
    """Logits of ``x`` with adapter ``name`` alone active (the base model for "__base__")."""
    with torch.no_grad():
        if name == "__base__":
            with minilora.disable_adapter(model):
                return model(input_ids=x).logits
        minilora.set_adapter(model, name)
        return model(input_ids=x).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_mixed_batch_equals_peft_and_each_adapter_alone(tiny, tmp_path, arch, kernel):
    model = build(tiny, arch)
    pm = as_peft(model, tmp_path)
    x = ids()
    with torch.no_grad():
        theirs = pm(input_ids=x, adapter_names=ROWS).logits
        with mixed_batch(model, ROWS, kernel=kernel):
            ours = model(input_ids=x).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert_rows_alone(model, x, ours)
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)  # the adapters do change the rows


def assert_rows_alone(model, x, ours):
    for i, name in enumerate(ROWS):  # each row is what its adapter computes alone
        torch.testing.assert_close(ours[i], alone(model, name, x[i:i + 1])[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "bert"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_an_adapter_without_a_copy_of_the_head_uses_the_original(tiny, arch, kernel):
    """PEFT 0.21 raises KeyError here (its wrapper looks up a copy adapter b does not have); the row of an
    adapter without a copy gets what that adapter computes alone: the original head."""
    model = build(tiny, arch, saved="ac")
    x = ids()
    with torch.no_grad(), mixed_batch(model, ROWS, kernel=kernel):
        ours = model(input_ids=x).logits
    assert_rows_alone(model, x, ours)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_generate_equals_peft_token_for_token(tiny, tmp_path, arch, kernel):
    model = build(tiny, arch, saved="")
    pm = as_peft(model, tmp_path)
    x = ids(length=5, seed=9)
    args = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        theirs = pm.generate(input_ids=x, adapter_names=ROWS, **args)
        with mixed_batch(model, ROWS, kernel=kernel):
            ours = model.generate(input_ids=x, **args)
    assert torch.equal(ours, theirs)
    assert len({tuple(row[5:].tolist()) for row in ours}) > 1  # the adapters answer differently


def test_kernels_equal_the_loop_on_a_real_sized_layer():
    torch.manual_seed(0)
    layer = minilora.LoRALinear(torch.nn.Linear(576, 192), r=8, lora_alpha=16)
    layer.update_layer("b", 2, 4, use_rslora=True)
    layer.update_layer("c", 16, 16)
    for p in layer.parameters():
        if p.requires_grad or p.dim() == 2 and p.shape[0] in (2, 8, 16, 192):
            torch.nn.init.normal_(p, std=0.1) if p is not layer.base_layer.weight else None
    model = torch.nn.Sequential(layer).eval()
    x = torch.randn(5, 3, 576)
    names = ["c", "default", "__base__", "c", "b"]
    outs = {}
    for kernel in KERNELS:
        with torch.no_grad(), mixed_batch(model, names, kernel=kernel):
            outs[kernel] = model(x)
    for kernel in ("bgmv", "sgmv"):
        torch.testing.assert_close(outs[kernel], outs["loop"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["loop"][2], layer.base_layer(x[2]).detach())


def test_punica_ops_against_a_row_by_row_product():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(3, 4, 6, generator=g), torch.randn(3, 5, 4, generator=g)
    x, idx = torch.randn(7, 6, generator=g), torch.tensor([2, 0, 0, 1, 2, 2, 1])
    want = torch.stack([B[i] @ (A[i] @ x[t]) * 0.5 for t, i in enumerate(idx.tolist())])
    v, y = torch.zeros(7, 4), torch.ones(7, 5)
    bgmv_shrink(x, A, v, idx, scaling=0.5)
    bgmv_expand(v, B, y, idx, add_inputs=True)
    torch.testing.assert_close(y, want + 1)
    order = torch.argsort(idx, stable=True)
    start, length, adapter = segments(idx[order])
    assert start.tolist() == [0, 2, 4] and length.tolist() == [2, 2, 3] and adapter.tolist() == [0, 1, 2]
    v, y = torch.zeros(7, 4), torch.zeros(7, 5)
    sgmv_shrink(x[order], A, v, start, length, adapter, scaling=0.5)
    sgmv_expand(v, B, y, start, length, adapter, add_inputs=False)
    torch.testing.assert_close(y, want[order])
    y = torch.zeros(7, 5)
    sgmv_expand(v, B, y, start, length, torch.tensor([0, -1, 2]), add_inputs=True)  # -1: that segment untouched
    assert (y[2:4] == 0).all() and not (y[:2] == 0).any()


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [
        (n, m.active_adapters, m.merged_adapters, m._mixed_batch) for n, m in minilora.lora_layers(model)]


def assert_same(model, before):
    tensors, layers = state(model)
    assert layers == before[1] and tensors.keys() == before[0].keys()
    assert all(torch.equal(tensors[k], before[0][k]) for k in tensors)


@pytest.mark.parametrize("bad, error, words", [
    ("a", TypeError, "one adapter name"),
    ([], ValueError, "empty"),
    (["a", "defualt"], UnknownAdapterError, "defualt"),
    ([1, 2], TypeError, "string"),
])
def test_bad_names_are_refused_and_change_nothing(tiny, bad, error, words):
    model = build(tiny, "llama")
    before = state(model)
    with pytest.raises(error, match=words):
        with mixed_batch(model, bad):
            pass
    assert_same(model, before)


def test_refusals_like_peft(tiny):
    model = build(tiny, "llama")
    before = state(model)
    with pytest.raises(ValueError, match="kernel"):
        with mixed_batch(model, ["a"], kernel="fast"):
            pass
    model.train()
    with pytest.raises(ValueError, match="eval"):
        with mixed_batch(model, ["a"]):
            pass
    model.eval()
    minilora.merge_adapter(model)
    with pytest.raises(ValueError, match="merged"):
        with mixed_batch(model, ["a"]):
            pass
    minilora.unmerge_adapter(model)
    before = state(model)  # (unmerging restores the weights up to rounding)
    with minilora.disable_adapter(model), pytest.raises(ValueError, match="switched off"):
        with mixed_batch(model, ["a"]):
            pass
    with mixed_batch(model, ["a", "b"]):  # a wrong batch size, and training mode, found at the forward pass
        with pytest.raises(ValueError, match="2 names but this batch has 6 rows"):
            model(input_ids=ids())
        with pytest.raises(ValueError, match="nest"):
            with mixed_batch(model, ["a", "b"]):
                pass
        model.train()
        with pytest.raises(ValueError, match="eval"):
            model(input_ids=ids(2))
        model.eval()
    assert_same(model, before)


def test_dora_is_refused_and_other_forwards_need_the_loop(tiny):
    model = build(tiny, "llama")
    minilora.add_adapter(model, "d", LoRAConfig(r=4, target_modules=["q_proj"], use_dora=True))
    before = state(model)
    with pytest.raises(ValueError, match="DoRA"):
        with mixed_batch(model, ["a", "d"]):
            pass
    with mixed_batch(model, ["a", "b"]):  # DoRA held but not used: fine
        pass
    assert_same(model, before)


def test_leaving_the_context_restores_the_model_even_after_an_error(tiny):
    model = build(tiny, "llama")
    minilora.set_adapter(model, "b")
    before, logits = state(model), tiny.logits(model)
    with pytest.raises(RuntimeError, match="boom"):
        with mixed_batch(model, ["c", "a"]):
            raise RuntimeError("boom")
    assert_same(model, before)
    torch.testing.assert_close(tiny.logits(model), logits, atol=0, rtol=0)
    heads = [m for m in model.modules() if isinstance(m, minilora.modules_to_save.ModulesToSaveWrapper)]
    assert heads and all(h._mixed_batch is None for h in heads)


def test_a_plan_can_be_reused_but_not_on_another_model(tiny):
    model = build(tiny, "llama")
    x = ids()
    with torch.no_grad():
        with mixed_batch(model, ROWS, kernel="bgmv") as plan:
            first = model(input_ids=x).logits
        with mixed_batch(model, plan) as again:  # the stacks are not built again
            assert again is plan and again.kernel == "bgmv"
            torch.testing.assert_close(model(input_ids=x).logits, first, atol=0, rtol=0)
    other = build(tiny, "llama")
    with pytest.raises(ValueError, match="another model"):
        with mixed_batch(other, plan):
            pass
    assert all(layer._mixed_batch is None for _, layer in minilora.lora_layers(other))
