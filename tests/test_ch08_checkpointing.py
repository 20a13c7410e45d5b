"""Gradient checkpointing with minilora's LoRA on a transformers model (chapter 08, section 5): the classic failure
of reentrant checkpointing on a frozen base, its two fixes, and what checkpointing keeps for the backward pass."""
import warnings

import pytest
import torch

from minilora.config import LoRAConfig
from minilora.inject import inject_lora


def _lora_llama(tiny, dropout=0.0):
    model = tiny.llama(num_hidden_layers=3)
    model.config.use_cache = False
    inject_lora(model, LoRAConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "v_proj"]))
    return tiny.as_if_trained(model).train()  # B != 0, so that lora_A gets a gradient too


def _lora_grads(model, ids):
    torch.manual_seed(7)  # the same dropout masks in every run
    model.zero_grad(set_to_none=True)
    model(ids, labels=ids).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if "lora_" in n}


def test_reentrant_checkpointing_of_a_frozen_base_trains_nothing(tiny):
    model = _lora_llama(tiny)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.disable_input_require_grads()  # transformers registers the fix itself; take it out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "None of the inputs have requires_grad=True"
        with pytest.raises(RuntimeError, match="does not require grad"):
            _lora_grads(model, tiny.IDS)
        model.model.norm.weight.requires_grad_(True)  # something trainable after the blocks: the silent failure
        grads = _lora_grads(model, tiny.IDS)
    assert grads and all(g is None for g in grads.values()) and model.model.norm.weight.grad is not None


@pytest.mark.parametrize("fix", ["enable_input_require_grads", "use_reentrant=False"])
def test_each_fix_gives_the_gradients_of_no_checkpointing(tiny, fix):
    model = _lora_llama(tiny, dropout=0.1)  # dropout: the recomputed forward must draw the same masks
    want = _lora_grads(model, tiny.IDS)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": fix != "use_reentrant=False"})
    model.disable_input_require_grads()
    if fix == "enable_input_require_grads":
        model.enable_input_require_grads()
    got = _lora_grads(model, tiny.IDS)
    assert len(got) == 3 * 2 * 2
    for name, g in want.items():
        assert g.abs().sum() > 0
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_keeps_only_each_layers_input(tiny):
    model = _lora_llama(tiny)

    def saved_bytes():
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(tiny.IDS, labels=tiny.IDS).loss
        loss.backward()
        return sum(n for k, n in storages.items() if k not in params)

    plain = saved_bytes()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ckpt = saved_bytes()
    b, s = tiny.IDS.shape
    h, layers, vocab = model.config.hidden_size, model.config.num_hidden_layers, model.config.vocab_size
    layer_inputs, logits = layers * b * s * h * 4, b * s * vocab * 4
    assert layer_inputs + logits <= ckpt < layer_inputs + logits + 2 * b * s * h * 4  # + the final norm's input
    assert ckpt < 0.5 * plain
