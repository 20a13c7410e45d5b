"""minilora.course.chat_runs: intruder counts per layer type (LoRA and full fine-tuning); the loss curves' protocol."""
import copy

import pytest
import torch

import minilora
from minilora import LoRAConfig
from minilora.course import chat_runs
from minilora.course.chat_runs import intruders
from minilora.course.data import load_instructions
from minilora.instruct import IGNORE_INDEX, ChatCollator
from minilora.intruders import intruder_dimensions


def test_lora_counts_only_adapted_layers_and_equals_the_detector(tiny):
    base = tiny.llama()
    model = copy.deepcopy(base)
    minilora.inject_lora(model, LoRAConfig(r=4, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for _, layer in minilora.lora_layers(model):
            layer.factors("default")[1].normal_(0, 1.0)
    counts = intruders(model, base)
    assert counts["layers_attention"] == 2 and counts["layers_mlp"] == 2  # q_proj and down_proj in 2 blocks
    want = sum(len(intruder_dimensions(layer.base_layer.weight, layer.base_layer.weight + layer.get_delta_weight(),
                                       10, 0.5)[0]) for name, layer in minilora.lora_layers(model) if "q_proj" in name)
    assert counts["intruders_attention"] == want > 0


def test_full_fine_tuning_counts_every_linear_layer_of_the_blocks(tiny):
    base = tiny.llama()
    model = copy.deepcopy(base)
    assert intruders(model, base) == {"intruders_attention": 0, "layers_attention": 8, "intruders_mlp": 0,
                                      "layers_mlp": 6}  # unchanged weights: no intruders
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.add_(3 * torch.outer(torch.randn(32), torch.randn(32)))
    assert intruders(model, base)["intruders_attention"] >= 1


# ----- curve and answer_loss: chapter 14's loss curves -------------------------------------------
@pytest.fixture
def tiny_chat(tiny_chat_model, monkeypatch):
    """``chat_runs`` with a tiny Llama (SmolLM2's tokenizer and vocabulary) in place of SmolLM2."""
    monkeypatch.setattr(chat_runs, "load_chat_model", tiny_chat_model)


def test_answer_loss_is_the_mean_nll_per_answer_token(tiny, chat_tokenizer):
    model = tiny.llama(vocab_size=len(chat_tokenizer), max_position_embeddings=256)
    rows, collate = load_instructions("large_validation"), ChatCollator(chat_tokenizer)
    total = count = 0
    with torch.no_grad():
        for row in rows:  # one row at a time, no padding: the model's own (shifted) loss, weighted by tokens
            batch = collate([row])
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total, count = total + model(**batch).loss.item() * n, count + n
    assert chat_runs.answer_loss(model, chat_tokenizer) == pytest.approx(total / count, rel=1e-5)
    assert not model.training


def test_curve_checkpoints_do_not_change_training(tiny_chat):
    setup = LoRAConfig(r=2, lora_alpha=4, target_modules="all-linear")
    _, _, fine = chat_runs.curve(setup, 1e-2, seed=0, checkpoints=(1, 3))
    _, _, coarse = chat_runs.curve(setup, 1e-2, seed=0, checkpoints=(3,))
    assert [r["step"] for r in fine] == [1, 3] and set(fine[0]) == {"step", "train_loss", "val_loss"}
    assert fine[1]["val_loss"] == coarse[0]["val_loss"]  # evaluating at step 1 left training as it was
    mean = (float(fine[0]["train_loss"]) + 2 * float(fine[1]["train_loss"])) / 3  # losses of the steps since the last
    assert float(coarse[0]["train_loss"]) == pytest.approx(mean, abs=2e-4)


def test_a_run_longer_than_one_pass_is_refused(tiny_chat):
    with pytest.raises(ValueError, match="'validation' has 10 batches of 8, fewer than the 11 steps"):
        chat_runs.train("full", 1e-5, 0, chat_runs.forgetting, split="validation", checkpoints=(11,))


def test_instruction_tuned_is_chapter_07s_run_merged_and_computed_once(tiny_chat, monkeypatch):
    monkeypatch.setattr(chat_runs, "_TUNED", {})
    calls = []
    real_train = chat_runs.train
    monkeypatch.setattr(chat_runs, "train", lambda *a, **k: calls.append(a) or real_train(*a, **k))
    model, _ = chat_runs.instruction_tuned()
    trained, _, _ = real_train(*chat_runs.CHAPTER_07, seed=0, evaluate=lambda m, t: {})
    want = minilora.merge_and_unload(trained).state_dict()
    assert not list(minilora.lora_layers(model)) and model.state_dict().keys() == want.keys()
    assert all(torch.allclose(v, want[k], atol=1e-6) for k, v in model.state_dict().items())
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()  # a copy: changing it leaves the kept weights as they were
    again, _ = chat_runs.instruction_tuned()
    assert len(calls) == 1 and torch.equal(again.model.embed_tokens.weight, want["model.embed_tokens.weight"])
    tuned, _ = chat_runs.start(LoRAConfig(r=2, target_modules=["q_proj"]), seed=0, tuned=True)
    assert any(isinstance(m, minilora.LoRALayer) for m in tuned.modules())
