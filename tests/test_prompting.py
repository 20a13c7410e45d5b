"""minilora.prompting and prompting_io (chapter 10) against PEFT: the same logits, counts, files and
generations for prompt tuning and prefix tuning on tiny Llama (grouped-query attention) and GPT-2."""
import copy
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from minilora.counting import get_nb_trainable_parameters
from minilora.course.models import CHAT_DIR, cached_models
from minilora.io import AdapterFileError, load_adapter, save_adapter
from minilora.prompting import (
    PrefixTuningConfig,
    PromptLearningModel,
    PromptTuningConfig,
    add_prompt_learning,
    fill_from_model,
)

peft = pytest.importorskip("peft")

N = 3
METHODS = {"prompt": ("PromptTuningConfig", {}), "prefix": ("PrefixTuningConfig", {}),
           "prefix_projection": ("PrefixTuningConfig", {"prefix_projection": True})}
CASES = [(arch, method) for arch in ("llama", "gpt2") for method in METHODS]
GEN = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}


def padded(tiny):
    """tiny.IDS with the first row left-padded by three pad tokens (id 0), and its attention mask."""
    ids, mask = tiny.IDS.clone(), torch.ones_like(tiny.IDS)
    ids[0, :3], mask[0, :3] = 0, 0
    return ids, mask


def both(tiny, arch, method, **kw):
    """PEFT's prompt-learning model and minilora's, on two copies of one base, with PEFT's (moved) parameters."""
    cls, extra = METHODS[method]
    base = tiny.make[arch]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), getattr(peft, cls)(
            task_type="CAUSAL_LM", num_virtual_tokens=N, **extra, **kw))
    ours_cls = PromptTuningConfig if cls == "PromptTuningConfig" else PrefixTuningConfig
    ours = add_prompt_learning(base, ours_cls(N, **extra, **kw))
    tiny.as_if_trained(theirs)  # values that a fresh, equally seeded model does not start from
    ours.prompt_encoder.load_state_dict(theirs.prompt_encoder.state_dict())
    return theirs.eval(), ours.eval()


def run(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))


@pytest.mark.parametrize("arch,method", CASES)
def test_logits_and_loss_equal_peft_with_padding(tiny, arch, method):
    theirs, ours = both(tiny, arch, method)
    ids, mask = padded(tiny)
    a, b = run(theirs, ids, mask), run(ours, ids, mask)
    length = ids.shape[1] + (N if method == "prompt" else 0)  # a prefix lives in the cache: no output rows
    assert b.logits.shape == (2, length, 100)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.loss, a.loss, atol=1e-5, rtol=0)
    plain = run(ours.base_model, ids, mask).logits
    assert (b.logits[:, -ids.shape[1]:] - plain).abs().max() > 1e-2, "the prompt changes the outputs"
    unmasked = run(ours, ids, torch.ones_like(mask)).logits  # and without padding
    torch.testing.assert_close(unmasked, run(theirs, ids, torch.ones_like(mask)).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,method", CASES)
def test_counts_and_filled_config_equal_peft(tiny, arch, method):
    theirs, ours = both(tiny, arch, method)
    assert get_nb_trainable_parameters(ours) == theirs.get_nb_trainable_parameters()
    assert {n.split(".")[0] for n, p in ours.named_parameters() if p.requires_grad} == {"prompt_encoder"}
    cfg, their_cfg = ours.active_peft_config.to_dict(), theirs.peft_config["default"]
    for key, value in cfg.items():
        assert getattr(their_cfg, key) == value, key
    rebuilt = getattr(peft, type(ours.active_peft_config).__name__)(**cfg)
    assert rebuilt.peft_type == cfg["peft_type"] and rebuilt.num_layers == cfg["num_layers"]


def test_prefix_sizes_follow_grouped_query_attention(tiny):
    llama = fill_from_model(PrefixTuningConfig(N), tiny.llama())  # 4 heads, 2 of them key/value heads, head_dim 8
    assert (llama.num_layers, llama.token_dim, llama.num_attention_heads, llama.encoder_hidden_size) == (2, 16, 2, 16)
    gpt2 = fill_from_model(PrefixTuningConfig(N), tiny.gpt2())
    assert (gpt2.num_layers, gpt2.token_dim, gpt2.num_attention_heads) == (2, 32, 4)
    assert fill_from_model(PromptTuningConfig(N), tiny.llama()).token_dim == 32  # a soft prompt is hidden-sized


SMOLLM2_135M = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "tie_word_embeddings": True}


def test_smollm2_prefix_is_11520_parameters_per_virtual_token():
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M))
    per_token = 30 * 2 * (3 * 64)
    assert per_token == 11_520
    for n in (1, 20):
        prefix = add_prompt_learning(copy.deepcopy(model), PrefixTuningConfig(n))
        assert get_nb_trainable_parameters(prefix)[0] == n * per_token
        assert get_nb_trainable_parameters(prefix)[1] == 134_515_008 + n * per_token
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(model, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20))
    assert theirs.get_nb_trainable_parameters()[0] == 20 * per_token
    prompt = add_prompt_learning(LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).to("meta"), PromptTuningConfig(20))
    assert get_nb_trainable_parameters(prompt)[0] == 20 * 576


def test_smollm2_values_are_the_cached_models():
    folder = cached_models()[CHAT_DIR]
    if folder is None:
        pytest.skip("SmolLM2-135M-Instruct is not cached here (make assets)")
    real = json.loads((folder / "config.json").read_text())
    assert {k: real[k] for k in SMOLLM2_135M} == SMOLLM2_135M


@pytest.fixture
def tokenizer_dir(tmp_path):
    """A word-level tokenizer of 12 words, saved as transformers saves one (ids fit the tiny vocab of 100)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "the a review is positive negative neutral predict if sentiment of [UNK]".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    return str(tmp_path / "tok")


@pytest.mark.parametrize("text,n", [("predict if the review is positive", 4), ("is positive", 5), ("neutral", 3)])
def test_text_init_equals_peft(tiny, tokenizer_dir, text, n):
    kw = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": text, "tokenizer_name_or_path": tokenizer_dir}
    base = tiny.llama()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=n, **kw))
    ours = add_prompt_learning(base, PromptTuningConfig(n, **kw))
    weight = ours.prompt_encoder["default"].embedding.weight
    torch.testing.assert_close(weight, theirs.prompt_encoder["default"].embedding.weight, atol=0, rtol=0)
    ids = [7, 8, 0, 2, 3, 4] if n == 4 else ([3, 4, 3, 4, 3] if n == 5 else [6, 6, 6])  # cut, repeated
    torch.testing.assert_close(weight, base.get_input_embeddings().weight[ids[:n]], atol=0, rtol=0)
    assert weight.requires_grad


@pytest.mark.parametrize("arch,method", CASES)
def test_minilora_saves_peft_loads(tiny, tmp_path, arch, method):
    _, ours = both(tiny, arch, method)
    ids, mask = padded(tiny)
    save_adapter(ours, tmp_path)
    assert set(load_file(tmp_path / "adapter_model.safetensors")) == {"prompt_embeddings"}
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["inference_mode"] is True and cfg["peft_type"] == ours.active_peft_config.peft_type
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.PeftModel.from_pretrained(tiny.make[arch](), tmp_path)
    torch.testing.assert_close(run(loaded, ids, mask).logits, run(ours, ids, mask).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,method", CASES)
def test_peft_saves_minilora_loads(tiny, tmp_path, arch, method):
    theirs, _ = both(tiny, arch, method)
    ids, mask = padded(tiny)
    theirs.save_pretrained(tmp_path)
    ours = load_adapter(tiny.make[arch](), tmp_path)
    assert isinstance(ours, PromptLearningModel)
    torch.testing.assert_close(run(ours, ids, mask).logits, run(theirs, ids, mask).logits, atol=1e-5, rtol=0)
    save_adapter(ours, tmp_path / "again")  # and round again: the same tensor
    torch.testing.assert_close(load_file(tmp_path / "again" / "adapter_model.safetensors")["prompt_embeddings"],
                               load_file(tmp_path / "adapter_model.safetensors")["prompt_embeddings"])


@pytest.mark.parametrize("arch,method", CASES)
def test_generate_with_left_padding_equals_peft(tiny, arch, method):
    theirs, ours = both(tiny, arch, method)
    ids, mask = padded(tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = theirs.generate(input_ids=ids, attention_mask=mask, **GEN)
    got = ours.generate(input_ids=ids, attention_mask=mask, **GEN)
    assert torch.equal(got, expected)
    assert not torch.equal(got, ours.base_model.generate(input_ids=ids, attention_mask=mask, **GEN))
    assert "prepare_inputs_for_generation" not in vars(ours.base_model), "generate leaves the base model as it was"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prefix_generation_does_not_depend_on_padding(tiny, arch):
    _, ours = both(tiny, arch, "prefix")
    ids, mask = padded(tiny)
    batch = ours.generate(input_ids=ids, attention_mask=mask, **GEN)[:, -5:]
    alone = [ours.generate(input_ids=tiny.IDS[:1, 3:], **GEN)[:, -5:], ours.generate(input_ids=tiny.IDS[1:], **GEN)
             [:, -5:]]
    assert torch.equal(batch, torch.cat(alone))


@pytest.mark.parametrize("method", METHODS)
def test_training_moves_only_the_prompt(tiny, method):
    _, ours = both(tiny, "llama", method)
    before = {n: p.detach().clone() for n, p in ours.named_parameters()}
    torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.5).zero_grad()
    ours(input_ids=tiny.IDS, labels=tiny.IDS).loss.backward()
    torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], lr=0.5).step()
    moved = {n for n, p in ours.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.startswith("prompt_encoder.") for n in moved)
    assert all(p.grad is None for n, p in ours.named_parameters() if not n.startswith("prompt_encoder."))


def test_labels_and_mask_are_extended(tiny):
    _, ours = both(tiny, "llama", "prompt")
    seen = {}
    ours.base_model.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)
    ids, mask = padded(tiny)
    ours(input_ids=ids, attention_mask=mask, labels=ids)
    assert seen["attention_mask"].tolist() == [[1] * N + row for row in mask.tolist()]
    assert seen["labels"].tolist() == [[-100] * N + row for row in ids.tolist()]
    assert seen["inputs_embeds"].shape == (2, N + ids.shape[1], 32) and seen.get("input_ids") is None


@pytest.mark.parametrize("kwargs,message", [
    ({"num_virtual_tokens": 0}, "an integer >= 1"),
    ({"num_virtual_tokens": 2, "task_type": "SEQ_CLS"}, "causal language models"),
    ({"num_virtual_tokens": 2, "prompt_tuning_init": "TEXT"}, "needs prompt_tuning_init_text"),
    ({"num_virtual_tokens": 2, "prompt_tuning_init": "SAMPLE_VOCAB"}, "'RANDOM' and 'TEXT'"),
    ({"num_virtual_tokens": 2, "num_transformer_submodules": 2}, "encoder-decoder"),
])
def test_bad_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromptTuningConfig(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"num_virtual_tokens": True}, "num_virtual_tokens must be an integer >= 1, got True"),
    ({"num_virtual_tokens": "8"}, "num_virtual_tokens must be an integer"),
    ({"num_virtual_tokens": 2.0}, "num_virtual_tokens must be an integer"),
    ({"num_virtual_tokens": 2, "task_type": None}, "task_type must be a string"),
    ({"num_virtual_tokens": 2, "prompt_tuning_init": 1}, "prompt_tuning_init must be"),
    ({"num_virtual_tokens": 2, "token_dim": "32"}, "token_dim must be an integer"),
    ({"num_virtual_tokens": 2, "inference_mode": 1}, "inference_mode must be True or False"),
])
def test_configs_of_the_wrong_type_are_type_errors(kwargs, message):
    with pytest.raises(TypeError, match=message):
        PromptTuningConfig(**kwargs)
    with pytest.raises(TypeError, match="prefix_projection must be True or False"):
        PrefixTuningConfig(2, prefix_projection="no")


def test_add_prompt_learning_returns_the_wrapper_and_copies_the_config(tiny):
    config = PrefixTuningConfig(N)
    base = tiny.llama()
    wrapper = add_prompt_learning(base, config)
    assert isinstance(wrapper, PromptLearningModel) and wrapper.base_model is base
    assert wrapper.active_peft_config is not config and config.num_layers is None  # the user's config is not filled
    assert not any(p.requires_grad for p in base.parameters())


def test_a_prompt_state_dict_round_trips(tiny):
    from minilora.io import get_peft_model_state_dict, set_peft_model_state_dict

    theirs, ours = both(tiny, "llama", "prefix")
    fresh = add_prompt_learning(tiny.llama(), PrefixTuningConfig(N))
    assert set_peft_model_state_dict(fresh, get_peft_model_state_dict(ours)) is fresh
    ids, mask = padded(tiny)
    torch.testing.assert_close(run(fresh, ids, mask).logits, run(ours, ids, mask).logits, atol=0, rtol=0)
    torch.testing.assert_close(get_peft_model_state_dict(ours)["prompt_embeddings"],
                               peft.get_peft_model_state_dict(theirs)["prompt_embeddings"], atol=1e-6, rtol=0)


def test_bad_calls_are_refused(tiny):
    from minilora import LoRAConfig

    _, ours = both(tiny, "llama", "prefix")
    with pytest.raises(ValueError, match="wrap the base model"):
        add_prompt_learning(ours, PrefixTuningConfig(2))
    with pytest.raises(TypeError, match="inject_lora"):
        add_prompt_learning(tiny.llama(), LoRAConfig(r=2))
    with pytest.raises(ValueError, match="takes no past_key_values"):
        ours(input_ids=tiny.IDS, past_key_values=ours.get_prompt(2))
    checkpointed = tiny.llama()
    checkpointed.gradient_checkpointing_enable()
    with pytest.raises(ValueError, match="gradient_checkpointing_disable"):
        add_prompt_learning(checkpointed, PrefixTuningConfig(2))


def _saved(tiny, tmp_path, arch="gpt2", method="prefix"):
    _, ours = both(tiny, arch, method)
    return save_adapter(ours, tmp_path / "adapter")


def _refused(model, directory, message):
    grads = [p.requires_grad for p in model.parameters()]
    with pytest.raises(AdapterFileError, match=message):
        load_adapter(model, directory)
    assert [p.requires_grad for p in model.parameters()] == grads, "a refused load leaves the model as it was"


@pytest.mark.parametrize("method", METHODS)
def test_a_file_from_another_base_model_is_refused(tiny, tmp_path, method):
    directory = _saved(tiny, tmp_path, "llama", method)
    wide = tiny.llama(hidden_size=48, num_hidden_layers=3)
    _refused(wide, directory, "does not fit this model .*num_layers: file 2, model 3; token_dim: file (16|32), "
             "model (24|48).* Load it into the model it was trained on")


def test_wrong_shapes_and_keys_are_refused(tiny, tmp_path):
    directory = _saved(tiny, tmp_path)
    weights = directory / "adapter_model.safetensors"
    good = load_file(weights)["prompt_embeddings"]
    save_file({"prompt_embeddings": good[:, :-1].contiguous()}, weights)
    _refused(tiny.gpt2(), directory, r"has shape \(3, 127\); .* need \(3, 128\)")
    save_file({"prompt_embeddings": good, "extra": good.clone()}, weights)
    _refused(tiny.gpt2(), directory, "should hold one tensor")
    weights.unlink()
    (directory / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(AdapterFileError, match="pickle"):
        load_adapter(tiny.gpt2(), directory)


def test_unknown_types_and_bad_configs_are_refused(tiny, tmp_path):
    directory = _saved(tiny, tmp_path)
    path = directory / "adapter_config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, "peft_type": "P_TUNING"}))
    _refused(tiny.gpt2(), directory, "peft_type='P_TUNING'")
    path.write_text(json.dumps({**cfg, "task_type": "SEQ_2_SEQ_LM", "num_transformer_submodules": 2}))
    _refused(tiny.gpt2(), directory, "not a valid PREFIX_TUNING config")
    path.write_text(json.dumps({**cfg, "num_virtual_tokens": 4}))
    _refused(tiny.gpt2(), directory, r"num_virtual_tokens=4 need \(4, 128\)")
    path.write_text(json.dumps(cfg))
    wrapped = load_adapter(tiny.gpt2(), directory)
    with pytest.raises(ValueError, match="has a prompt already"):  # the model's state, not the file, is wrong
        load_adapter(wrapped, directory)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_prefix_from_text_starts_as_the_base_model_reading_the_text(tiny, tokenizer_dir, arch):
    """init_prefix_from_text: the prefixed model's logits are the base model's on [text ids; input]."""
    from transformers import AutoTokenizer

    from minilora.prompting import init_prefix_from_text

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    for text, n in [("predict if the review is positive", 4), ("is positive", 5)]:
        base = tiny.make[arch]().eval()
        model = add_prompt_learning(base, PrefixTuningConfig(n))
        model.train()  # the text's keys and values are computed in eval mode; the modes are then put back
        assert init_prefix_from_text(model, tok, text) is model
        assert all(m.training for m in model.modules())
        model.eval()
        ids = torch.tensor((tok(text)["input_ids"] * 5)[:n])
        with torch.no_grad():
            want = base(input_ids=torch.cat((ids.expand(len(tiny.IDS), -1), tiny.IDS), dim=1)).logits[:, n:]
            got = model(input_ids=tiny.IDS).logits
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        assert model.prompt_encoder["default"].embedding.weight.requires_grad


def test_prefix_from_text_refuses_what_it_cannot_set(tiny, tokenizer_dir):
    from transformers import AutoTokenizer

    from minilora.prompting import init_prefix_from_text

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    with pytest.raises(ValueError, match="prefix_projection"):
        init_prefix_from_text(add_prompt_learning(tiny.llama(), PrefixTuningConfig(3, prefix_projection=True)),
                              tok, "is positive")
    with pytest.raises(ValueError, match="prompt_tuning_init='TEXT'"):
        init_prefix_from_text(add_prompt_learning(tiny.llama(), PromptTuningConfig(3)), tok, "is positive")
    with pytest.raises(ValueError, match="no adapter named 'other'"):
        init_prefix_from_text(add_prompt_learning(tiny.llama(), PrefixTuningConfig(3)), tok, "is positive", "other")
