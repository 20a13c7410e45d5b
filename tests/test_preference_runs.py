"""minilora.course.preference_runs on a tiny Llama with SmolLM2's tokenizer: the references DPO starts from."""
import math

import pytest
import torch

from minilora import LoRAConfig, inject_lora, lora_layers
from minilora.course import preference_runs
from minilora.course.preference_data import load_preferences
from minilora.instruct import ChatCollator
from minilora.utils import seed_everything

CONFIG = LoRAConfig(r=4, lora_alpha=8, target_modules="all-linear")


@pytest.fixture
def tiny_runs(tiny_chat_model, monkeypatch):
    monkeypatch.setattr(preference_runs, "instruction_tuned", tiny_chat_model)
    rows = load_preferences("train")[:24]
    monkeypatch.setattr(preference_runs, "load_preferences", lambda split: rows)
    return rows


def test_dpo_starts_at_log_2_and_learns_its_pairs(tiny_runs):
    _, _, log = preference_runs.train("dpo", CONFIG, 2e-2, seed=0, steps=12)
    assert log[0]["loss"] == pytest.approx(0.6931, abs=1e-4) and log[0]["margin"] == pytest.approx(0, abs=1e-6)
    assert len(log) == 12  # 24 pairs, 8 per step: 4 passes
    assert log[-1]["margin"] > 0.05 and log[-1]["loss"] < 0.65


@pytest.fixture
def chosen_answers(tiny_runs, monkeypatch):
    """Greedy answers that ended: each row's chosen answer (a tiny random model never says <|im_end|>)."""
    answers = {r["prompt"]: r["chosen"] for r in tiny_runs}
    monkeypatch.setattr(preference_runs, "generate", lambda model, tok, prompts, **kw: [answers[x] for x in prompts])
    return answers


def test_scores_of_a_fresh_adapter(tiny_runs, chosen_answers):
    model, tok = preference_runs.instruction_tuned()
    inject_lora(model, CONFIG)  # B = 0: the policy is its reference
    s = preference_runs.scores(model, tok, "validation")
    assert s["margin"] == pytest.approx(0, abs=1e-6) and s["answers"] == [r["chosen"] for r in tiny_runs]
    assert {k for k in s if k.startswith("win_")} == {"win_overall", *(f"win_{r['property']}" for r in tiny_runs)}
    assert s["win_overall"] == 100 and s["neutral_nll"] > 0 and s["drift"] == pytest.approx(0, abs=1e-6)


def test_the_drift_is_the_log_ratio_of_the_models_own_answers(tiny_runs, chosen_answers):
    model, tok = preference_runs.instruction_tuned()
    ref = preference_runs.reference(model, tok, "validation")
    inject_lora(model, CONFIG)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.factors("default")[1].normal_(0, 0.05)
    s = preference_runs.scores(model, tok, "validation")
    with torch.no_grad():
        chosen, _ = preference_runs.pair_logps(model, ChatCollator(tok), tiny_runs)
    assert s["drift"] == pytest.approx((chosen - ref[0]).mean().item(), abs=1e-4)  # own answers = the chosen ones


def test_no_answer_that_ended_gives_no_drift(tiny_runs):
    model, tok = preference_runs.instruction_tuned()  # a tiny random model: every answer is cut
    assert math.isnan(preference_runs.scores(model, tok, "validation")["drift"])


def test_after_sft_the_reference_is_the_sft_model(tiny_runs):
    # the policy starts equal to its reference, so the first DPO loss is log 2 only if the reference is the
    # SFT model (merged), not the base
    model, _, log = preference_runs.train("sft+dpo", CONFIG, 1e-3, seed=0, sft_lr=5e-2)
    assert log[0]["loss"] == pytest.approx(0.6931, abs=1e-4)
    assert len(list(lora_layers(model))) > 0


def test_refusals(tiny_runs):
    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        preference_runs.train("ppo", CONFIG, 1e-3, 0)
    with pytest.raises(ValueError, match="sft_lr"):
        preference_runs.train("dpo", CONFIG, 1e-3, 0, sft_lr=1e-3)
    with pytest.raises(ValueError, match="sft_lr"):
        preference_runs.train("sft+dpo", CONFIG, 1e-3, 0)
    with pytest.raises(ValueError, match="ref is the instruction-tuned model's reference"):
        preference_runs.train("sft+dpo", CONFIG, 1e-3, 0, sft_lr=1e-3, ref=(None, None))


def test_pair_batches_go_through_every_pair_before_repeating():
    batches = preference_runs.pair_batches(20, seed=3, steps=7)  # 8, 8, 4 per pass
    assert [len(b) for b in batches] == [8, 8, 4, 8, 8, 4, 8]
    assert sorted(sum(batches[:3], [])) == list(range(20)) == sorted(sum(batches[3:6], []))
    assert batches == preference_runs.pair_batches(20, seed=3, steps=7) != preference_runs.pair_batches(20, 4, 7)


def test_a_reference_computed_before_gives_the_same_run(tiny_runs):
    model, tok = preference_runs.instruction_tuned()
    ref = preference_runs.reference(model, tok)  # no adapter yet: the model is its own reference
    assert ref[0].shape == ref[1].shape == (len(tiny_runs),)
    seed_everything(0)  # as train does after loading
    given = preference_runs.dpo(model, tok, CONFIG, 1e-2, seed=0, ref=ref)
    _, _, computed = preference_runs.train("dpo", CONFIG, 1e-2, seed=0)
    assert given == computed


def test_a_wrong_reference_is_refused_before_the_adapter_goes_in(tiny_runs):
    model, tok = preference_runs.instruction_tuned()
    chosen, rejected = preference_runs.reference(model, tok)
    with pytest.raises(ValueError, match="ref must be reference"):
        preference_runs.dpo(model, tok, CONFIG, 1e-2, seed=0, ref=(chosen[:-1], rejected[:-1]))
    assert not list(lora_layers(model))


def test_scores_of_a_model_without_adapters(tiny_runs, chosen_answers):
    model, tok = preference_runs.instruction_tuned()
    s = preference_runs.scores(model, tok, "validation")
    assert s["margin"] == 0 and s["drift"] == 0 and 0 <= s["task_exact"] <= 100
