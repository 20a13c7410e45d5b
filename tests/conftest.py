"""What the unit tests share: tiny random-weight transformers, a batch of token ids, and helpers.

Every test that needs a model asks for the ``tiny`` fixture: ``tiny.bert()``, ``tiny.gpt2()`` (its
linear layers are Conv1D) and ``tiny.llama()`` build a fresh 2-layer model, seeded, each call;
``tiny.make[arch]()`` does the same by name; ``tiny.logits(model)`` runs ``tiny.IDS`` through it;
``tiny.as_if_trained(model)`` gives every trainable tensor a random non-zero value; and
``tiny.peft(base, targets, **kw)`` is PEFT's ``get_peft_model`` on a copy of ``base``.
"""
import copy
import warnings
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

IDS = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(1))


def tiny_bert():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def as_if_trained(model, seed=3):
    """Give every trainable tensor (A, B, saved modules) a random non-zero value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def peft_model(base, targets, **kw):
    """PEFT's model on a copy of ``base``: r=4, lora_alpha=8, B random (``init_lora_weights=False``)
    unless ``kw`` says otherwise."""
    from peft import LoraConfig, get_peft_model

    kw = {"r": 4, "lora_alpha": 8, "init_lora_weights": False, **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns that it switches fan_in_fan_out on for Conv1D
        return get_peft_model(copy.deepcopy(base), LoraConfig(target_modules=targets, **kw))


@pytest.fixture
def tiny():
    return SimpleNamespace(bert=tiny_bert, gpt2=tiny_gpt2, llama=tiny_llama,
                           make={"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama},
                           IDS=IDS, logits=logits, as_if_trained=as_if_trained, peft=peft_model)
