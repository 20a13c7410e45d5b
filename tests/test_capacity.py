"""minilora.course.capacity: random labels on MiniLM inputs, the fit and the bits it stores (chapter 14)."""
import math
import pathlib

import pytest
import torch

from minilora import LoRAConfig
from minilora.course.capacity import MAX_TOKENS, bits_stored, memorize, random_label_batches
from tools.results_csv import read_results

pytestmark = pytest.mark.usefixtures("needs_minilm")


def _rows(batches):
    """(tokens without padding, label) of every row, in the batches' order."""
    return [(tuple(ids[mask.bool()].tolist()), int(y)) for b in batches
            for ids, mask, y in zip(b["input_ids"], b["attention_mask"], b["labels"])]


def test_bits_are_zero_at_chance_and_n_at_a_perfect_fit():
    assert bits_stored(0.5, 1000) == 0 and bits_stored(0.3, 1000) == 0
    assert bits_stored(1.0, 1000) == 1000
    h = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))
    assert bits_stored(0.9, 1000) == pytest.approx(1000 * (1 - h))  # 531 bits
    assert bits_stored(0.6, 100) < bits_stored(0.7, 100) < bits_stored(0.8, 100)
    with pytest.raises(ValueError, match="accuracy"):
        bits_stored(1.5, 10)


def test_inputs_are_distinct_truncated_and_labels_belong_to_the_seed(encoder_tokenizer):
    score = random_label_batches(encoder_tokenizer, 100, seed=0)
    rows = _rows(score)
    assert len(rows) == 100 and len({ids for ids, _ in rows}) == 100
    assert max(len(ids) for ids, _ in rows) <= MAX_TOKENS
    assert all(ids[0] == encoder_tokenizer.cls_token_id and ids[-1] == encoder_tokenizer.sep_token_id
               for ids, _ in rows)
    labels = dict(rows)
    assert 30 < sum(labels.values()) < 70  # about half of each
    for epoch in (0, 1):  # a shuffled epoch: the same rows with the same labels, in another order
        shuffled = _rows(random_label_batches(encoder_tokenizer, 100, seed=0, epoch=epoch))
        assert dict(shuffled) == labels and [ids for ids, _ in shuffled] != [ids for ids, _ in rows]
    assert _rows(random_label_batches(encoder_tokenizer, 100, 0, 0)) != _rows(random_label_batches(
        encoder_tokenizer, 100, 0, 1))
    other = dict(_rows(random_label_batches(encoder_tokenizer, 100, seed=1)))
    assert other.keys() == labels.keys() and other != labels  # another seed: the same inputs, other labels


def test_more_rows_than_the_data_hold_is_refused(encoder_tokenizer):
    with pytest.raises(ValueError, match="distinct truncated training reviews: pass n <="):
        random_label_batches(encoder_tokenizer, 100_000, seed=0)
    with pytest.raises(ValueError, match="setup must be"):
        memorize("lora", 10, 1e-3)
    with pytest.raises(ValueError, match="lr"):
        memorize("head", 10, 0.0)


def test_head_only_trains_the_head_and_lora_trains_adapters_and_head():
    head = memorize("head", 64, 1e-2, seed=0, epochs=2)
    assert head.trainable == 384 * 2 + 2 and len(head.losses) == 2 * 2  # two epochs of two batches of 32
    for name, p in head.model.named_parameters():
        assert p.requires_grad == name.startswith("classifier.")
    lora = memorize(LoRAConfig(r=1, lora_alpha=2, target_modules=["query", "value"], modules_to_save=["classifier"]),
                    64, 5e-3, seed=0, epochs=2)
    assert lora.trainable == 6 * 2 * (384 + 384) + 384 * 2 + 2
    again = memorize("head", 64, 1e-2, seed=0, epochs=2)
    assert again.losses == head.losses and again.accuracy == head.accuracy  # seeded
    assert 0.0 <= head.bits <= 64 and head.bits == bits_stored(head.accuracy, 64)


def test_a_long_run_stores_more_than_chance():
    run = memorize("full", 64, 2e-4, seed=0, epochs=8)
    assert run.accuracy > 0.9 and run.bits > 30  # 64 random labels are easy for 22.7M parameters
    assert torch.tensor(run.losses[-2:]).mean() < torch.tensor(run.losses[:2]).mean()


def test_the_sweep_file_agrees_with_a_run_made_now():
    """One chosen row of results/ch14_capacity.csv (the cheapest setup, the head alone) trained again."""
    rows = read_results(pathlib.Path(__file__).resolve().parents[1] / "results" / "ch14_capacity.csv")
    row = next(r for r in rows if r["setup"] == "head only" and r["seed"] == "0" and r["chosen"] == "1")
    run = memorize("head", int(row["n"]), float(row["lr"]), seed=0, epochs=int(row["epochs"]))
    assert abs(run.accuracy - float(row["accuracy"])) <= 2 / 1024  # two labels of 1,024: another CPU's floats
    assert run.trainable == int(row["trainable"])
