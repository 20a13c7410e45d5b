"""minilora.course.rl_runs on a tiny Llama with SmolLM2's tokenizer: the reward, the loop, its determinism."""
import pytest

from minilora import LoRAConfig
from minilora.course import chat_runs, rl_runs

CONFIG = LoRAConfig(r=4, lora_alpha=8, target_modules="all-linear")


@pytest.fixture
def tiny_rl(tiny_chat_model, monkeypatch):
    monkeypatch.setattr(chat_runs, "load_chat_model", tiny_chat_model)
    monkeypatch.setattr(chat_runs, "instruction_tuned", tiny_chat_model)  # RL starts from chapter 07's model


@pytest.mark.parametrize("row, answer, ended, expected", [
    ({"skill": "arithmetic", "response": "85"}, " 85\n", True, 1.0),
    ({"skill": "arithmetic", "response": "85"}, "The answer is 85.", True, 0.0),
    ({"skill": "arithmetic", "response": "85"}, "85", False, 0.0),  # cut by the budget
    ({"skill": "json", "response": '{"a": 1, "b": 2}'}, '{"b": 2, "a": 1}', True, 1.0),
])
def test_reward(row, answer, ended, expected):
    assert rl_runs.reward(row, answer, ended) == expected


def test_the_loop_pairs_each_answer_with_its_prompt_and_is_seeded(tiny_rl, monkeypatch):
    sampled, scored = [], []
    real_sample = rl_runs.sample

    def recording_sample(model, tok, instructions, *args, **kwargs):
        sampled.append(list(instructions))
        return real_sample(model, tok, instructions, *args, **kwargs)

    def recording_reward(row, answer, ended=True):
        scored.append(row["instruction"])
        return float(len(answer) % 2)  # something that varies within a group

    monkeypatch.setattr(rl_runs, "sample", recording_sample)
    monkeypatch.setattr(rl_runs, "reward", recording_reward)
    model, _, log = rl_runs.train(CONFIG, 1e-2, seed=0, steps=3)
    assert [r["step"] for r in log] == [1, 2, 3] and all(0 <= r["reward"] <= 1 for r in log)
    for step, instructions in enumerate(sampled):  # answers i*G .. i*G+G-1 are scored against prompt i
        assert len(instructions) == rl_runs.PROMPTS
        assert scored[step * rl_runs.PROMPTS * rl_runs.GROUP:(step + 1) * rl_runs.PROMPTS * rl_runs.GROUP] == \
            [x for x in instructions for _ in range(rl_runs.GROUP)]
    assert len({x for batch in sampled for x in batch}) == 3 * rl_runs.PROMPTS  # no prompt twice in an epoch
    assert any(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    sampled.clear()
    again = rl_runs.train(CONFIG, 1e-2, seed=0, steps=2)[2]
    assert again == log[:2]  # seeded: the same samples, rewards and steps


def test_unknown_skill_is_refused_before_anything_loads(monkeypatch):
    monkeypatch.setattr(chat_runs, "instruction_tuned", lambda: pytest.fail("loaded a model"))
    with pytest.raises(ValueError, match="unknown skill 'poetry'"):
        rl_runs.train(CONFIG, 1e-3, 0, 1, skill="poetry")
