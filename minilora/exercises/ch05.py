r"""Exercises of chapter 05 (Fine-tuning a pretrained encoder).

* 5.1 ``freeze_all_but_classifier(model) -> model``: the *linear probe*. Every parameter of a
  ``BertForSequenceClassification`` is frozen (``requires_grad=False``) except the new head,
  ``model.classifier`` (weight and bias): :math:`d \cdot K + K` trainable numbers for hidden size
  :math:`d` and :math:`K` classes.
* 5.2 ``lora_config_for_classifier(r) -> LoRAConfig``: LoRA of rank ``r`` on the attention
  ``query`` and ``value`` layers with :math:`\alpha = 2r`, and the freshly initialised classifier
  trained fully (``modules_to_save``) -- a random head that stays frozen cannot be learned.
* 5.3 ``predict_sentiment(model, tokenizer, texts) -> list[str]``: the label names
  (``"negative"``/``"positive"``) the model predicts, in eval mode, without building a graph.
* 5.4 ``choose_config(results) -> str``: the configuration with the best *validation* accuracy
  (ties: fewer trainable parameters). The test split is only for the final report.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from ..config import LoRAConfig
from ..inject import ModulesToSave, inject_lora
from ._core import Hint, checker

LABELS = ("negative", "positive")


def _tiny_bert(num_labels: int = 2, seed: int = 0, vocab_size: int = 100) -> nn.Module:
    """A 2-layer random-weight BERT classifier (hidden 32), built from a config: no download."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
    return BertForSequenceClassification(cfg)


@checker("Exercise 5.1: the linear probe")
def check_freeze_all_but_classifier(freeze_all_but_classifier: Callable[[nn.Module], nn.Module]) -> None:
    """Only ``classifier.weight`` and ``classifier.bias`` may stay trainable; nothing else changes."""
    for num_labels in (2, 3):
        model = _tiny_bert(num_labels)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        out = freeze_all_but_classifier(model)
        if out is None:
            raise Hint("return the model at the end of the function.")
        trainable = [n for n, p in out.named_parameters() if p.requires_grad]
        want = ["classifier.weight", "classifier.bias"]
        if not trainable:
            raise Hint("nothing is trainable: you froze the classifier head too. Its weight and bias "
                       "must keep requires_grad=True, or the probe cannot learn anything.")
        if "classifier.bias" not in trainable and "classifier.weight" in trainable:
            raise Hint("the classifier's bias is frozen: keep every parameter of model.classifier trainable.")
        extra = [n for n in trainable if n not in want]
        if extra:
            raise Hint(f"{len(extra)} parameter tensors besides the head are still trainable, e.g. "
                       f"{extra[:3]}. Freeze everything (p.requires_grad_(False) for all parameters), "
                       "then unfreeze model.classifier.")
        if sorted(trainable) != sorted(want):
            raise Hint(f"expected exactly {want} to be trainable, found {trainable}.")
        changed = [n for n, p in out.named_parameters() if not torch.equal(p.detach(), before.get(n, p.detach()))]
        if changed or set(dict(out.named_parameters())) != set(before):
            raise Hint("only change requires_grad: the weights themselves must stay as they were "
                       "(do not re-initialise or replace any layer).")


@checker("Exercise 5.2: a LoRA config for a classifier")
def check_lora_config_for_classifier(lora_config_for_classifier: Callable[[int], LoRAConfig]) -> None:
    """LoRA r on query and value, alpha = 2r, the classifier head in ``modules_to_save``."""
    for r in (2, 4):
        cfg = lora_config_for_classifier(r)
        if not isinstance(cfg, LoRAConfig):
            raise Hint(f"return a minilora LoRAConfig(...), got {type(cfg).__name__}.")
        if cfg.r != r:
            raise Hint(f"use the rank you are given: LoRAConfig(r=r, ...); for r={r} you set r={cfg.r}.")
        if cfg.alpha != 2 * r:
            raise Hint(f"set alpha = 2 * r (a scaling alpha / r of 2); for r={r} you set alpha={cfg.alpha}.")
        model = inject_lora(_tiny_bert(), copy.deepcopy(cfg))
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        lora_in = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names if ".lora_" in n}
        if lora_in != {"query", "value"}:
            raise Hint(f"target the attention 'query' and 'value' layers only; your config adapts {sorted(lora_in)}.")
        if not isinstance(model.classifier, ModulesToSave) or not any(n.startswith("classifier") for n in names):
            raise Hint("the classifier head is new (random) and frozen: nothing can learn to map the "
                       "encoder's features to labels. Add modules_to_save=['classifier'] so it trains fully.")
        if cfg.dropout != 0.0 or cfg.bias != "none":
            raise Hint("keep the other settings at their defaults (dropout=0.0, bias='none').")


def _tokenizer():
    from transformers import AutoTokenizer

    from ..models import ENCODER_DIR, model_path

    return AutoTokenizer.from_pretrained(model_path(ENCODER_DIR))


TEXTS = ["The soup was cold and bland.", "Great hotel, friendly staff, and a lovely view!",
         "I wouldn't call it bad.", "Meh.", "The charger stopped working after two days, which was a shame.",
         "Not my favourite film, but the ending was wonderful and that is what I'll remember."]


@checker("Exercise 5.3: predict sentiment")
def check_predict_sentiment(predict_sentiment: Callable[[nn.Module, object, list[str]], list[str]]) -> None:
    """Label names from ``argmax`` of the logits, eval mode (dropout off), padding with a mask."""
    tok = _tokenizer()
    model = _tiny_bert(vocab_size=tok.vocab_size, seed=0)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.5
    with torch.no_grad():
        model.eval()
        enc = tok(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
        margin = (model(**enc).logits @ torch.tensor([-1.0, 1.0])).sort().values
        model.classifier.bias[1] -= (margin[2] + margin[3]) / 2  # a random model predicts one class: split 3/3
        want = [LABELS[i] for i in model(**enc).logits.argmax(-1).tolist()]
        unmasked = [LABELS[i] for i in model(input_ids=enc["input_ids"]).logits.argmax(-1).tolist()]
    model.train()  # as after training: the learner's function must switch dropout off itself
    torch.manual_seed(0)
    got = predict_sentiment(model, tok, TEXTS)
    if isinstance(got, torch.Tensor) or (isinstance(got, list) and got and not isinstance(got[0], str)):
        raise Hint("return the label *names*, e.g. ['negative', 'positive', ...]: LABELS[i] for each predicted "
                   "class index i (LABELS = ('negative', 'positive')).")
    if not isinstance(got, (list, tuple)) or len(got) != len(TEXTS):
        raise Hint(f"return a list with one label per text ({len(TEXTS)} here), got {got!r}.")
    got = list(got)
    if got == want:
        return
    if got == unmasked and unmasked != want:
        raise Hint("pass the attention_mask too (model(**enc)): without it, the padding tokens of the "
                   "shorter texts are attended to and change their predictions.")
    raise Hint("some predictions differ from the model's. Call model.eval() first (dropout is on in "
               "training mode, which makes predictions random), tokenize with padding=True and "
               "return_tensors='pt', and take logits.argmax(dim=-1).")


@checker("Exercise 5.4: choose a configuration on validation")
def check_choose_config(choose_config: Callable[[dict], str]) -> None:
    """``results``: name -> {"val": accuracy, "test": accuracy, "trainable": count}."""
    cases = [
        ({"probe": {"val": 0.70, "test": 0.71, "trainable": 770},
          "lora r=4": {"val": 0.90, "test": 0.88, "trainable": 37_634},
          "lora r=8": {"val": 0.89, "test": 0.91, "trainable": 74_498}}, "lora r=4"),
        ({"lora r=1": {"val": 0.85, "test": 0.86, "trainable": 9_986},
          "lora r=16": {"val": 0.92, "test": 0.90, "trainable": 148_226},
          "full": {"val": 0.92, "test": 0.89, "trainable": 22_713_986}}, "lora r=16"),
        ({"a": {"val": 0.80, "test": 0.70, "trainable": 50},
          "b": {"val": 0.80, "test": 0.90, "trainable": 10}}, "b"),
    ]
    for results, want in cases:
        got = choose_config(copy.deepcopy(results))
        if got not in results:
            raise Hint(f"return one of the names (the keys of results), got {got!r}.")
        if got == want:
            continue
        best_test = max(results, key=lambda n: results[n]["test"])
        if got == best_test:
            raise Hint("you chose by *test* accuracy. The test split is only for the final report; "
                       "choosing on it makes the reported number optimistic. Choose on 'val'.")
        top = max(r["val"] for r in results.values())
        if results[got]["val"] == top:
            raise Hint("on a tie in validation accuracy, prefer the configuration with fewer trainable "
                       "parameters (smaller, cheaper to store and less likely to overfit).")
        raise Hint(f"expected {want!r}: the highest 'val' accuracy (ties: fewest 'trainable'), got {got!r}.")


__all__ = ["check_freeze_all_but_classifier", "check_lora_config_for_classifier", "check_predict_sentiment",
           "check_choose_config"]
