r"""Exercises of chapter 05 (Fine-tuning a pretrained encoder).

* 5.1 ``freeze_all_but_top(model, k) -> model``: partial fine-tuning, between the linear probe
  and a full fine-tune. In the chapter's ``SentenceClassifier`` only the last ``k`` encoder layers
  and the classifier stay trainable (``k = 0``: the head only).
* 5.2 ``training_state_bytes(model) -> int``: the memory of what training keeps besides the
  activations, in fp32 with AdamW: every weight (4 bytes), and for each *trainable* parameter its
  gradient (4 bytes) and AdamW's two moments (8 bytes): :math:`4 P + 12 P_{train}` bytes.
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
from transformers import AutoTokenizer, BertConfig, BertModel

from ...config import LoRAConfig
from ...inject import inject_lora
from ..models import ENCODER_DIR, SentenceClassifier, model_path
from ._core import Hint, checker

LABELS = ("negative", "positive")


def _tiny_bert(num_labels: int = 2, seed: int = 0, vocab_size: int = 100, num_layers: int = 2) -> nn.Module:
    """A small random-weight mean-pooling classifier (hidden 32), like the chapter's: no download."""
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=num_layers,
                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    return SentenceClassifier(BertModel(cfg, add_pooling_layer=False), num_labels)


def _expected_top(model: nn.Module, k: int) -> list[str]:
    n_layers = model.config.num_hidden_layers
    top = tuple(f"bert.encoder.layer.{i}." for i in range(n_layers - k, n_layers))
    return sorted(n for n, _ in model.named_parameters() if n.startswith(top + ("classifier.",)))


@checker("Exercise 5.1: train only the top of the encoder")
def check_freeze_all_but_top(freeze_all_but_top: Callable[[nn.Module, int], nn.Module]) -> None:
    """Trainable: the last ``k`` encoder layers and the classifier; nothing else changes."""
    for k in (1, 0, 2):
        model = _tiny_bert(num_layers=3)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        out = freeze_all_but_top(model, k)
        if out is None:
            raise Hint("return the model at the end of the function.")
        got = sorted(n for n, p in out.named_parameters() if p.requires_grad)
        want = _expected_top(out, k)
        if got == want:
            changed = [n for n, p in out.named_parameters() if not torch.equal(p.detach(), before[n])]
            if changed:
                raise Hint("only change requires_grad: the weights themselves must stay as they were "
                           "(do not re-initialise or replace any layer).")
            continue
        layers = sorted({int(n.split(".")[3]) for n in got if n.startswith("bert.encoder.layer.")})
        wanted_layers = list(range(3 - k, 3))
        if not any(n.startswith("classifier.") for n in got):
            raise Hint("the classifier head is frozen: it is new and random, so it must train.")
        if any(n.startswith("bert.embeddings.") for n in got):
            raise Hint("the embeddings are at the *bottom* of the model: keep them frozen.")
        if layers != wanted_layers:
            raise Hint(f"with k={k} of 3 encoder layers, train layers {wanted_layers} (the last k: "
                       f"model.bert.encoder.layer[-k:] -- careful, [-0:] is the whole list), "
                       f"you train layers {layers}.")
        raise Hint(f"expected exactly these trainable tensors: {want}; you have {got}.")


def _state_models() -> list[tuple[nn.Module, int, int]]:
    """(model, all parameters, trainable parameters) for a few freezing patterns."""
    full = _tiny_bert()
    probe = _tiny_bert().requires_grad_(False)
    probe.classifier.requires_grad_(True)
    lora = inject_lora(_tiny_bert(), LoRAConfig(r=2, lora_alpha=4, target_modules=["query", "value"],
                                                modules_to_save=["classifier"]))
    out = []
    for m in (full, probe, lora):
        params = list(m.parameters())
        out.append((m, sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)))
    return out


@checker("Exercise 5.2: the memory of the training state")
def check_training_state_bytes(training_state_bytes: Callable[[nn.Module], int]) -> None:
    """fp32 AdamW: 4 bytes per weight, plus 4 (gradient) + 8 (two moments) per trainable parameter."""
    for model, total, trainable in _state_models():
        got = training_state_bytes(model)
        if isinstance(got, torch.Tensor):
            got = got.item()
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            raise Hint(f"return a number of bytes (an int), got {type(got).__name__}.")
        want = 4 * total + 12 * trainable
        if got == want:
            continue
        if got == 16 * total:
            raise Hint("frozen parameters have no gradient and no optimizer state: only the trainable ones "
                       "cost the extra 4 + 8 bytes. Use p.requires_grad.")
        if got == 16 * trainable:
            raise Hint("the frozen weights are still in memory (4 bytes each): count every parameter once, "
                       "then add 12 bytes per trainable one.")
        if got == 4 * total + 8 * trainable:
            raise Hint("AdamW keeps *two* moments per trainable parameter (8 bytes), plus the gradient (4).")
        if got == 4 * total + 4 * trainable:
            raise Hint("besides the gradient (4 bytes), AdamW keeps two moments (8 bytes) per trainable parameter.")
        if got == total + 3 * trainable:
            raise Hint("you counted numbers, not bytes: an fp32 number takes 4 bytes.")
        raise Hint(f"for {total:,} parameters of which {trainable:,} train, expected {want:,} bytes, got {got:,}: "
                   "4 * (all parameters) + (4 + 8) * (trainable parameters).")


def _tokenizer():
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
    if got == [LABELS[1 - LABELS.index(w)] for w in want]:
        raise Hint("every prediction is the other label: the labels are swapped. Class index 0 is "
                   f"{LABELS[0]!r} and 1 is {LABELS[1]!r}: LABELS[i] for the argmax i.")
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


__all__ = ["check_freeze_all_but_top", "check_training_state_bytes", "check_predict_sentiment",
           "check_choose_config"]
