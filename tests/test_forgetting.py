"""minilora.course.forgetting (chapter 14): the quiz and the neutral prompts, and how they are scored."""
import json
import random

import pytest
import torch

from minilora.course.data import data_dir
from minilora.course.forgetting import (
    choice_logprobs,
    continuation_nll,
    load_neutral,
    load_quiz,
    quiz_accuracy,
)
from tools.make_forgetting_data import SEED, quiz_items


def test_the_quiz_is_what_the_generator_writes_and_well_formed():
    items = load_quiz()
    assert items == quiz_items(random.Random(SEED))
    assert len(items) >= 100 and len({i["question"] for i in items}) == len(items)
    for item in items:
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4 and item["answer"] in range(4)
    answers = [i["answer"] for i in items]  # the right answer is not always in the same place
    assert min(answers.count(k) for k in range(4)) > len(items) / 8


def test_the_neutral_prompts_have_continuations():
    rows = load_neutral()
    assert len(rows) == 40 and all(r["prompt"] and len(r["continuation"]) > 40 for r in rows)
    raw = (data_dir("forgetting") / "neutral_prompts.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in raw] == rows


@pytest.fixture
def model_and_tokenizer(tiny, chat_tokenizer):
    return tiny.llama(vocab_size=len(chat_tokenizer)), chat_tokenizer


def plain_logprob(model, context, target):
    ids = torch.tensor([context + target])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
    return [logp[len(context) - 1 + t, tok].item() for t, tok in enumerate(target)]


def test_choices_are_scored_as_one_unpadded_sequence_each(model_and_tokenizer):
    model, tok = model_and_tokenizer
    items = load_quiz()[:5]
    got = choice_logprobs(model, tok, items, batch_size=3)  # batches that split items, with padding
    for item, scores in zip(items, got):
        context = tok(f"Question: {item['question']}\nAnswer:", add_special_tokens=False).input_ids
        for choice, score in zip(item["choices"], scores):
            want = sum(plain_logprob(model, context, tok(" " + choice, add_special_tokens=False).input_ids))
            assert score == pytest.approx(want, abs=1e-4)
    accuracy = quiz_accuracy(model, tok, items)
    right = sum(max(range(4), key=lambda k: s[k]) == i["answer"] for s, i in zip(got, items))
    assert accuracy == pytest.approx(100 * right / 5)


def test_continuation_nll_is_the_mean_per_token_then_over_rows(model_and_tokenizer):
    model, tok = model_and_tokenizer
    rows = load_neutral()[:3]
    want = []
    for r in rows:
        values = plain_logprob(model, tok(r["prompt"], add_special_tokens=False).input_ids,
                               tok(r["continuation"], add_special_tokens=False).input_ids)
        want.append(-sum(values) / len(values))
    assert continuation_nll(model, tok, rows, batch_size=2) == pytest.approx(sum(want) / 3, abs=1e-4)
