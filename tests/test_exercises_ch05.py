"""Chapter 05 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import pytest
import torch

from minilora.config import LoRAConfig
from minilora.data import LABELS
from minilora.exercises import ch05
from minilora.models import cached_models


def stub(*args):
    raise NotImplementedError


CHECKS = [ch05.check_freeze_all_but_classifier, ch05.check_lora_config_for_classifier,
          ch05.check_predict_sentiment, ch05.check_choose_config]
needs_tokenizer = pytest.mark.skipif(cached_models()["all-MiniLM-L6-v2"] is None,
                                     reason="the MiniLM tokenizer is not cached: run `make assets`")


# Exercise 5.1 --------------------------------------------------------------------------------------
def freeze_all_but_classifier(model):
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("classifier."))
    return model


def _freeze_all(model):
    model.requires_grad_(False)
    return model


def _freeze_weight_only(model):
    freeze_all_but_classifier(model)
    model.classifier.bias.requires_grad_(False)
    return model


def _pooler_too(model):
    freeze_all_but_classifier(model)
    model.bert.pooler.requires_grad_(True)
    return model


def _reinit_head(model):
    freeze_all_but_classifier(model)
    torch.nn.init.zeros_(model.classifier.weight)
    return model


def _no_return(model):
    freeze_all_but_classifier(model)


FREEZE_WRONG = {
    "froze everything": (_freeze_all, "froze the classifier head too"),
    "bias frozen": (_freeze_weight_only, "bias is frozen"),
    "pooler trainable": (_pooler_too, "besides the head"),
    "nothing frozen": (lambda m: m, "besides the head"),
    "re-initialised the head": (_reinit_head, "only change requires_grad"),
    "no return": (_no_return, "return the model"),
}


# Exercise 5.2 --------------------------------------------------------------------------------------
def lora_config_for_classifier(r):
    return LoRAConfig(r=r, alpha=2 * r, target_modules=["query", "value"], modules_to_save=["classifier"])


CONFIG_WRONG = {
    "no modules_to_save": (lambda r: LoRAConfig(r=r, alpha=2 * r, target_modules=["query", "value"]),
                           "modules_to_save=['classifier']"),
    "alpha = r": (lambda r: LoRAConfig(r=r, alpha=r, target_modules=["query", "value"],
                                       modules_to_save=["classifier"]), "alpha = 2 * r"),
    "fixed rank": (lambda r: LoRAConfig(r=8, alpha=16, target_modules=["query", "value"],
                                        modules_to_save=["classifier"]), "use the rank"),
    "all-linear": (lambda r: LoRAConfig(r=r, alpha=2 * r, target_modules="all-linear",
                                        modules_to_save=["classifier"]), "'query' and 'value'"),
    "query only": (lambda r: LoRAConfig(r=r, alpha=2 * r, target_modules=["query"],
                                        modules_to_save=["classifier"]), "'query' and 'value'"),
    "with dropout": (lambda r: LoRAConfig(r=r, alpha=2 * r, dropout=0.1, target_modules=["query", "value"],
                                          modules_to_save=["classifier"]), "defaults"),
    "a dict": (lambda r: {"r": r, "alpha": 2 * r}, "LoRAConfig"),
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
    (ch05.check_freeze_all_but_classifier, freeze_all_but_classifier),
    (ch05.check_lora_config_for_classifier, lora_config_for_classifier),
    pytest.param(ch05.check_predict_sentiment, predict_sentiment, marks=needs_tokenizer),
    (ch05.check_choose_config, choose_config),
])
def test_solution_passes(check, solution, capsys):
    assert check(solution) is True
    assert "passed." in capsys.readouterr().out


@pytest.mark.parametrize("check,wrong,hint", (
    [(ch05.check_freeze_all_but_classifier, fn, h) for fn, h in FREEZE_WRONG.values()]
    + [(ch05.check_lora_config_for_classifier, fn, h) for fn, h in CONFIG_WRONG.values()]
    + [pytest.param(ch05.check_predict_sentiment, fn, h, marks=needs_tokenizer) for fn, h in PREDICT_WRONG.values()]
    + [(ch05.check_choose_config, fn, h) for fn, h in CHOOSE_WRONG.values()]
), ids=[*FREEZE_WRONG, *CONFIG_WRONG, *PREDICT_WRONG, *CHOOSE_WRONG])
def test_wrong_answer_fails_with_its_hint(check, wrong, hint, capsys):
    assert check(wrong) is False
    out = capsys.readouterr().out
    assert "not yet" in out or "raised" in out
    assert hint in out, out
