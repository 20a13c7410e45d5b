"""minilora.rl: seeded group sampling, group-relative advantages and the policy-gradient loss."""
import pytest
import torch

from minilora.instruct import IGNORE_INDEX
from minilora.preference import get_batch_logps
from minilora.rl import group_advantages, policy_gradient_loss, sample


@pytest.fixture
def chat(tiny, chat_tokenizer):
    return tiny.llama(vocab_size=len(chat_tokenizer), max_position_embeddings=256), chat_tokenizer


def test_sample_is_seeded_prompt_major_and_labels_only_the_answer(chat):
    model, tok = chat
    model.train()
    state = torch.random.get_rng_state()
    a = sample(model, tok, ["What is 2 + 3?", "Name a colour."], num_samples=3, max_new_tokens=6, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state) and model.training  # global RNG and mode untouched
    b = sample(model, tok, ["What is 2 + 3?", "Name a colour."], num_samples=3, max_new_tokens=6, seed=7)
    c = sample(model, tok, ["What is 2 + 3?", "Name a colour."], num_samples=3, max_new_tokens=6, seed=8)
    assert torch.equal(a["input_ids"], b["input_ids"]) and a["completions"] == b["completions"]
    assert not torch.equal(a["input_ids"], c["input_ids"])
    assert len(a["completions"]) == 6 and a["input_ids"].shape == a["labels"].shape == a["attention_mask"].shape
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for i in range(6):
        answer = [t for t in a["labels"][i].tolist() if t != IGNORE_INDEX]
        assert 1 <= len(answer) <= 6 and (answer[-1] == end) == a["ended"][i]
        want = tok.decode(answer[:-1] if a["ended"][i] else answer, skip_special_tokens=True,
                          clean_up_tokenization_spaces=False)
        assert a["completions"][i] == want
        n = int(a["attention_mask"][i].sum())
        assert a["labels"][i, :n][-len(answer):].tolist() == a["input_ids"][i, n - len(answer):n].tolist()
    prompt_len = [int((a["labels"][i] == IGNORE_INDEX)[:int(a["attention_mask"][i].sum())].sum()) for i in range(6)]
    assert prompt_len[0] == prompt_len[1] == prompt_len[2]  # one group, one prompt


def test_sample_refusals(chat):
    model, tok = chat
    with pytest.raises(TypeError, match="wrap a single one"):
        sample(model, tok, "What is 2 + 3?", 2, 4)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        sample(model, tok, ["x"], 2, 4, temperature=0)


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    assert group_advantages(r, 3).tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0, 0, 0])
    scaled = group_advantages(r, 3, scale=True)
    assert scaled[:3].tolist() == pytest.approx([(2 / 3) / 0.57735, (-1 / 3) / 0.57735, (-1 / 3) / 0.57735], rel=1e-4)
    assert scaled[3:].tolist() == [0, 0, 0]  # a group that all scored the same teaches nothing
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        group_advantages(r, 4)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(r, 1)


def test_a_step_raises_the_answers_that_beat_their_group(chat):
    model, tok = chat
    batch = sample(model, tok, ["Name a colour."], num_samples=4, max_new_tokens=5, seed=0)
    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0])
    logps = get_batch_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                            batch["labels"])
    policy_gradient_loss(logps, advantages).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.5 * p.grad
        after = get_batch_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                batch["labels"])
    assert (after - logps.detach())[[0, 3]].mean() > (after - logps.detach())[[1, 2]].mean()
    with pytest.raises(ValueError, match="same shape"):
        policy_gradient_loss(logps, advantages[:3])
