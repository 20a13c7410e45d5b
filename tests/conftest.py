"""What the unit tests share: tiny random-weight transformers, a batch of token ids, and helpers.

Every test that needs a model asks for the ``tiny`` fixture: ``tiny.bert()``, ``tiny.gpt2()`` (its
linear layers are Conv1D) and ``tiny.llama()`` build a fresh 2-layer model, seeded, each call
(``tiny.llama(hidden_size=48, ...)``: the same model with some of its ``LlamaConfig`` fields changed);
``tiny.make[arch]()`` does the same by name; ``tiny.logits(model)`` runs ``tiny.IDS`` through it;
``tiny.as_if_trained(model)`` gives every trainable tensor a random non-zero value; and
``tiny.peft(base, targets, **kw)`` is PEFT's ``get_peft_model`` on a copy of ``base``.

The two cached models' tokenizers are session fixtures, ``chat_tokenizer`` (SmolLM2) and ``encoder_tokenizer``
(MiniLM); a test that asks for one is skipped, with ``make assets`` as the reason, where the model is not cached.
"""
import copy
import warnings
from types import SimpleNamespace

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from minilora.course.models import CHAT_DIR, ENCODER_DIR, AssetsMissing, model_path

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


LLAMA = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64)


def tiny_llama(seed=0, **overrides):
    """The tiny Llama (``LLAMA``), or with ``overrides`` of its config fields; weights seeded by ``seed``."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**LLAMA, **overrides})).eval()


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


def cached_tokenizer(name):
    """The tokenizer of a cached model (``minilora.course.models``), or a skip that says to run make assets."""
    try:
        return AutoTokenizer.from_pretrained(model_path(name))
    except AssetsMissing as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def chat_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer (its chat template, ``<|im_end|>``)."""
    return cached_tokenizer(CHAT_DIR)


@pytest.fixture(scope="module")
def needs_minilm():
    """Skip the module, saying to run make assets, when MiniLM is not cached (``pytestmark = usefixtures``)."""
    try:
        model_path(ENCODER_DIR)
    except AssetsMissing as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def encoder_tokenizer():
    """all-MiniLM-L6-v2's tokenizer."""
    return cached_tokenizer(ENCODER_DIR)


@pytest.fixture
def tiny_chat_model(chat_tokenizer):
    """A stand-in for ``minilora.course.models.load_chat_model``: a tiny Llama with SmolLM2's tokenizer and
    vocabulary, for testing chapter 14's and 15's run protocols (``monkeypatch.setattr(module, "load_chat_model",
    tiny_chat_model)``)."""
    return lambda: (tiny_llama(vocab_size=len(chat_tokenizer), max_position_embeddings=256), chat_tokenizer)


@pytest.fixture
def tiny():
    return SimpleNamespace(bert=tiny_bert, gpt2=tiny_gpt2, llama=tiny_llama,
                           make={"bert": tiny_bert, "gpt2": tiny_gpt2, "llama": tiny_llama},
                           IDS=IDS, logits=logits, as_if_trained=as_if_trained, peft=peft_model)
