"""Chapter 05 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import functools

import pytest
import torch
from checker_protocol import assert_specific_hint, protocol_tests

from minilora.course.data import LABELS
from minilora.course.exercises import ch05
from minilora.course.models import cached_models


def needs_tokenizer(check):
    """``check``, skipping the test that calls it when the MiniLM tokenizer (which it loads) is not cached."""
    @functools.wraps(check)
    def run(answer):
        if cached_models()["all-MiniLM-L6-v2"] is None:
            pytest.skip("the MiniLM tokenizer is not cached: run `make assets`")
        return check(answer)

    return run


# Exercise 5.1 --------------------------------------------------------------------------------------
def freeze_all_but_top(model, k):
    model.requires_grad_(False)
    if k > 0:
        for layer in model.bert.encoder.layer[-k:]:
            layer.requires_grad_(True)
    model.classifier.requires_grad_(True)
    return model


def _top_slice_bug(model, k):  # [-0:] is the whole list
    model.requires_grad_(False)
    for part in [*model.bert.encoder.layer[-k:], model.classifier]:
        part.requires_grad_(True)
    return model


def _first_k(model, k):
    freeze_all_but_top(model, 0)
    for layer in model.bert.encoder.layer[:k]:
        layer.requires_grad_(True)
    return model


def _with_layer_norms(model, k):  # the LayerNorms of every block: more than the top k
    freeze_all_but_top(model, k)
    for name, module in model.named_modules():
        if name.startswith("bert.encoder.layer.") and name.endswith("LayerNorm"):
            module.requires_grad_(True)
    return model


def _head_frozen(model, k):
    freeze_all_but_top(model, k)
    model.classifier.requires_grad_(False)
    return model


def _with_embeddings(model, k):
    freeze_all_but_top(model, k)
    model.bert.embeddings.requires_grad_(True)
    return model


def _reinit(model, k):
    freeze_all_but_top(model, k)
    torch.nn.init.zeros_(model.classifier.weight)
    return model


def _no_return(model, k):
    freeze_all_but_top(model, k)


FREEZE_WRONG = {
    "[-0:] slice": _top_slice_bug,
    "first k layers": _first_k,
    "one layer too many": lambda m, k: freeze_all_but_top(m, k + 1),
    "every LayerNorm trainable": _with_layer_norms,
    "head frozen": _head_frozen,
    "embeddings trainable": _with_embeddings,
    "nothing frozen": lambda m, k: m,
    "re-initialised the head": _reinit,
    "no return": _no_return,
}


# Exercise 5.2 --------------------------------------------------------------------------------------
def training_state_bytes(model):
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return 4 * total + (4 + 8) * trainable


def _numels(model):
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


STATE_WRONG = {
    "16 bytes for all": lambda m: 16 * _numels(m)[0],
    "trainable only": lambda m: 16 * _numels(m)[1],
    "one moment": lambda m: 4 * _numels(m)[0] + 8 * _numels(m)[1],
    "gradient only": lambda m: 4 * _numels(m)[0] + 4 * _numels(m)[1],
    "numbers not bytes": lambda m: _numels(m)[0] + 3 * _numels(m)[1],
    "bf16 weights": lambda m: 2 * _numels(m)[0] + 12 * _numels(m)[1],
    "a string": lambda m: str(training_state_bytes(m)),
}


# Exercise 5.3 --------------------------------------------------------------------------------------
def predict_sentiment(model, tokenizer, texts):
    model.eval()
    enc = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        pred = model(**enc).logits.argmax(dim=-1)
    return [LABELS[i] for i in pred.tolist()]


def _train_mode(model, tokenizer, texts):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return [LABELS[i] for i in model(**enc).logits.argmax(-1).tolist()]


def _no_mask(model, tokenizer, texts):
    model.eval()
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return [LABELS[i] for i in model(input_ids=enc["input_ids"]).logits.argmax(-1).tolist()]


def _indices(model, tokenizer, texts):
    model.eval()
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    return model(**enc).logits.argmax(-1).tolist()


def _swapped(model, tokenizer, texts):
    return [{"negative": "positive", "positive": "negative"}[p] for p in predict_sentiment(model, tokenizer, texts)]


PREDICT_WRONG = {
    "train mode": _train_mode,
    "no attention mask": _no_mask,
    "indices": _indices,
    "labels swapped": _swapped,
    "first text only": lambda m, t, x: predict_sentiment(m, t, x[:1]),
}


# Exercise 5.4 --------------------------------------------------------------------------------------
def choose_config(results):
    return max(results, key=lambda n: (results[n]["val"], -results[n]["trainable"]))


CHOOSE_WRONG = {
    "by test": lambda res: max(res, key=lambda n: res[n]["test"]),
    "ties to the bigger": lambda res: max(res, key=lambda n: (res[n]["val"], res[n]["trainable"])),
    "fewest parameters": lambda res: min(res, key=lambda n: res[n]["trainable"]),
    "not a name": lambda res: max(r["val"] for r in res.values()),
}

CASES = [
    (ch05.check_freeze_all_but_top, freeze_all_but_top, FREEZE_WRONG),
    (ch05.check_training_state_bytes, training_state_bytes, STATE_WRONG),
    (needs_tokenizer(ch05.check_predict_sentiment), predict_sentiment, PREDICT_WRONG),
    (ch05.check_choose_config, choose_config, CHOOSE_WRONG),
]


test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES, hint_required=True)


@pytest.mark.parametrize("wrong,fragment", [
    (FREEZE_WRONG["[-0:] slice"], "[-0:]"),
    (FREEZE_WRONG["first k layers"], "the last k"),
    (FREEZE_WRONG["one layer too many"], "the last k"),
    (FREEZE_WRONG["every LayerNorm trainable"], "the last k"),
    (FREEZE_WRONG["head frozen"], "classifier head is frozen"),
    (FREEZE_WRONG["embeddings trainable"], "embeddings"),
    (FREEZE_WRONG["nothing frozen"], "embeddings"),
    (FREEZE_WRONG["re-initialised the head"], "only change requires_grad"),
    (FREEZE_WRONG["no return"], "return the model"),
    (STATE_WRONG["16 bytes for all"], "frozen parameters have no gradient"),
    (STATE_WRONG["trainable only"], "frozen weights are still in memory"),
    (STATE_WRONG["one moment"], "*two* moments"),
    (STATE_WRONG["gradient only"], "two moments"),
    (STATE_WRONG["numbers not bytes"], "not bytes"),
    (STATE_WRONG["bf16 weights"], "expected"),
    (STATE_WRONG["a string"], "an int"),
    (PREDICT_WRONG["train mode"], "model.eval()"),
    (PREDICT_WRONG["no attention mask"], "attention_mask"),
    (PREDICT_WRONG["indices"], "label *names*"),
    (PREDICT_WRONG["labels swapped"], "swapped"),
    (PREDICT_WRONG["first text only"], "one label per text"),
    (CHOOSE_WRONG["by test"], "*test* accuracy"),
    (CHOOSE_WRONG["ties to the bigger"], "on a tie"),
    (CHOOSE_WRONG["fewest parameters"], "expected"),
    (CHOOSE_WRONG["not a name"], "one of the names"),
])
def test_hints_are_specific(wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, cases=CASES)
