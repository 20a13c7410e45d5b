"""minilora.course.preference_runs on a tiny Llama with SmolLM2's tokenizer: the references DPO starts from."""
import pytest

from minilora import LoRAConfig, inject_lora, lora_layers
from minilora.course import preference_runs
from minilora.course.preference_data import load_preferences

CONFIG = LoRAConfig(r=4, lora_alpha=8, target_modules="all-linear")


@pytest.fixture
def tiny_runs(tiny_chat_model, monkeypatch):
    monkeypatch.setattr(preference_runs, "load_chat_model", tiny_chat_model)
    rows = load_preferences("train")[:24]
    monkeypatch.setattr(preference_runs, "load_preferences", lambda split: rows)
    return rows


def test_dpo_starts_at_log_2_and_learns_its_pairs(tiny_runs):
    _, _, log = preference_runs.train("dpo", CONFIG, 2e-2, seed=0, epochs=4)
    assert log[0]["loss"] == pytest.approx(0.6931, abs=1e-4) and log[0]["margin"] == pytest.approx(0, abs=1e-6)
    assert len(log) == 4 * 3  # 24 pairs, 8 per step, 4 epochs
    assert log[-1]["margin"] > 0.05 and log[-1]["loss"] < 0.65


def test_scores_of_a_fresh_adapter(tiny_runs, chat_tokenizer):
    model, tok = preference_runs.load_chat_model()
    inject_lora(model, CONFIG)  # B = 0: the policy is its reference
    s = preference_runs.scores(model, tok, "validation")
    assert s["margin"] == pytest.approx(0, abs=1e-6) and len(s["answers"]) == len(tiny_runs)
    assert {k for k in s if k.startswith("win_")} == {"win_overall", *(f"win_{r['property']}" for r in tiny_runs)}
    assert 0 <= s["win_overall"] <= 100 and s["neutral_nll"] > 0


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
