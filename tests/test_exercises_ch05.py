"""Chapter 05 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import pytest
import torch

from minilora.data import LABELS
from minilora.exercises import ch05
from minilora.models import cached_models


def stub(*args):
    raise NotImplementedError


CHECKS = [ch05.check_freeze_all_but_top, ch05.check_training_state_bytes,
          ch05.check_predict_sentiment, ch05.check_choose_config]
needs_tokenizer = pytest.mark.skipif(cached_models()["all-MiniLM-L6-v2"] is None,
                                     reason="the MiniLM tokenizer is not cached: run `make assets`")


# Exercise 5.1 --------------------------------------------------------------------------------------
def freeze_all_but_top(model, k):
    model.requires_grad_(False)
    if k > 0:
        for layer in model.bert.encoder.layer[-k:]:
            layer.requires_grad_(True)
    model.bert.pooler.requires_grad_(True)
    model.classifier.requires_grad_(True)
    return model


def _top_slice_bug(model, k):  # [-0:] is the whole list
    model.requires_grad_(False)
    for part in [*model.bert.encoder.layer[-k:], model.bert.pooler, model.classifier]:
        part.requires_grad_(True)
    return model


def _first_k(model, k):
    freeze_all_but_top(model, 0)
    for layer in model.bert.encoder.layer[:k]:
        layer.requires_grad_(True)
    return model


def _no_pooler(model, k):
    freeze_all_but_top(model, k)
    model.bert.pooler.requires_grad_(False)
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
    "[-0:] slice": (_top_slice_bug, "[-0:]"),
    "first k layers": (_first_k, "the last k"),
    "one layer too many": (lambda m, k: freeze_all_but_top(m, k + 1), "the last k"),
    "pooler frozen": (_no_pooler, "pooler"),
    "head frozen": (_head_frozen, "classifier head is frozen"),
    "embeddings trainable": (_with_embeddings, "embeddings"),
    "nothing frozen": (lambda m, k: m, "embeddings"),
    "re-initialised the head": (_reinit, "only change requires_grad"),
    "no return": (_no_return, "return the model"),
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
    "16 bytes for all": (lambda m: 16 * _numels(m)[0], "frozen parameters have no gradient"),
    "trainable only": (lambda m: 16 * _numels(m)[1], "frozen weights are still in memory"),
    "one moment": (lambda m: 4 * _numels(m)[0] + 8 * _numels(m)[1], "*two* moments"),
    "gradient only": (lambda m: 4 * _numels(m)[0] + 4 * _numels(m)[1], "two moments"),
    "numbers not bytes": (lambda m: _numels(m)[0] + 3 * _numels(m)[1], "not bytes"),
    "bf16 weights": (lambda m: 2 * _numels(m)[0] + 12 * _numels(m)[1], "expected"),
    "a string": (lambda m: str(training_state_bytes(m)), "an int"),
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
    "train mode": (_train_mode, "model.eval()"),
    "no attention mask": (_no_mask, "attention_mask"),
    "indices": (_indices, "label *names*"),
    "labels swapped": (_swapped, "model.eval()"),
    "first text only": (lambda m, t, x: predict_sentiment(m, t, x[:1]), "one label per text"),
}


# Exercise 5.4 --------------------------------------------------------------------------------------
def choose_config(results):
    return max(results, key=lambda n: (results[n]["val"], -results[n]["trainable"]))


CHOOSE_WRONG = {
    "by test": (lambda res: max(res, key=lambda n: res[n]["test"]), "*test* accuracy"),
    "ties to the bigger": (lambda res: max(res, key=lambda n: (res[n]["val"], res[n]["trainable"])), "on a tie"),
    "fewest parameters": (lambda res: min(res, key=lambda n: res[n]["trainable"]), "expected"),
    "not a name": (lambda res: max(r["val"] for r in res.values()), "one of the names"),
}


@pytest.mark.parametrize("check", CHECKS)
def test_stub_is_not_attempted(check, capsys):
    if check is ch05.check_predict_sentiment and cached_models()["all-MiniLM-L6-v2"] is None:
        pytest.skip("the MiniLM tokenizer is not cached: run `make assets`")
    assert check(stub) is None
    assert "not attempted yet" in capsys.readouterr().out


@pytest.mark.parametrize("check,solution", [
    (ch05.check_freeze_all_but_top, freeze_all_but_top),
    (ch05.check_training_state_bytes, training_state_bytes),
    pytest.param(ch05.check_predict_sentiment, predict_sentiment, marks=needs_tokenizer),
    (ch05.check_choose_config, choose_config),
])
def test_solution_passes(check, solution, capsys):
    assert check(solution) is True
    assert "passed." in capsys.readouterr().out


@pytest.mark.parametrize("check,wrong,hint", (
    [(ch05.check_freeze_all_but_top, fn, h) for fn, h in FREEZE_WRONG.values()]
    + [(ch05.check_training_state_bytes, fn, h) for fn, h in STATE_WRONG.values()]
    + [pytest.param(ch05.check_predict_sentiment, fn, h, marks=needs_tokenizer) for fn, h in PREDICT_WRONG.values()]
    + [(ch05.check_choose_config, fn, h) for fn, h in CHOOSE_WRONG.values()]
), ids=[*FREEZE_WRONG, *STATE_WRONG, *PREDICT_WRONG, *CHOOSE_WRONG])
def test_wrong_answer_fails_with_its_hint(check, wrong, hint, capsys):
    assert check(wrong) is False
    out = capsys.readouterr().out
    assert "not yet" in out or "raised" in out
    assert hint in out, out
