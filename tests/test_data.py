"""The sentiment dataset (data/sentiment) and its loader (minilora.course.data)."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from minilora.course import data
from minilora.course.data import DOMAINS, LABELS, domain_ids, label_ids, load_sentiment, make_loader

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"train": 1600, "validation": 400, "test": 400}
MAX_WORDS = 40
# Two reviews are near-duplicates when their lower-cased word sets overlap this much (Jaccard):
# at 0.75 a 12-word review and a copy with one word swapped (11/13 = 0.85) are caught, while
# "The food was bland." and "The food was cold." (3/5 = 0.6) count as different reviews.
MAX_JACCARD = 0.75


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {s: load_sentiment(s) for s in SIZES}


@pytest.fixture(scope="module")
def tokenizer(encoder_tokenizer):
    return encoder_tokenizer  # MiniLM's (tests/conftest.py), loaded once per session


def word_set(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9]+", text.lower()))


# ------------------------------------------------------------------------------ the data
def test_sizes_and_schema(splits):
    for split, n in SIZES.items():
        assert len(splits[split]) == n, split
        header = (ROOT / "data" / "sentiment" / f"{split}.csv").read_text(encoding="utf-8").splitlines()[0]
        assert header == "text,label,domain"
    assert len(DOMAINS) >= 4


def test_labels_and_domains_allowed(splits):
    for rows in splits.values():
        assert {r["label"] for r in rows} == set(LABELS)
        assert {r["domain"] for r in rows} == set(DOMAINS)


def test_exactly_balanced_per_domain_per_split(splits):
    for split, rows in splits.items():
        counts = Counter((r["domain"], r["label"]) for r in rows)
        expected = SIZES[split] // (len(DOMAINS) * len(LABELS))
        assert set(counts.values()) == {expected}, (split, counts)
        assert len(counts) == len(DOMAINS) * len(LABELS)


def test_texts_are_clean_and_short(splits):
    for rows in splits.values():
        for r in rows:
            text = r["text"]
            assert text == text.strip() and "  " not in text and "\n" not in text, text
            assert 3 <= len(text.split()) <= MAX_WORDS, text
            assert text[0].isupper() and text[-1] in ".!?", text


def test_every_review_fits_in_64_tokens(splits, tokenizer):
    lengths = [len(tokenizer(r["text"])["input_ids"]) for rows in splits.values() for r in rows]
    assert max(lengths) <= 64, max(lengths)  # chapter 05 uses max_length=64: nothing is truncated
    assert 8 <= np.mean(lengths) <= 30


def test_no_exact_duplicates(splits):
    norm = [" ".join(re.findall(r"[a-z0-9']+", r["text"].lower())) for rows in splits.values() for r in rows]
    dupes = [t for t, c in Counter(norm).items() if c > 1]
    assert dupes == []


def test_no_near_duplicates_within_or_across_splits(splits):
    rows = [(s, r["text"]) for s, rs in splits.items() for r in rs]
    sets = [word_set(t) for _, t in rows]
    vocab = {w: i for i, w in enumerate(sorted(set().union(*sets)))}
    x = np.zeros((len(sets), len(vocab)), dtype=np.float32)
    for i, ws in enumerate(sets):
        x[i, [vocab[w] for w in ws]] = 1.0
    inter = x @ x.T
    size = x.sum(1)
    jac = inter / (size[:, None] + size[None, :] - inter)
    np.fill_diagonal(jac, 0.0)
    i, j = np.unravel_index(jac.argmax(), jac.shape)
    assert jac[i, j] < MAX_JACCARD, f"near-duplicates ({jac[i, j]:.2f}): {rows[i]} / {rows[j]}"


def test_the_near_duplicate_threshold_means_what_it_says():
    def jac(a, b):
        return len(word_set(a) & word_set(b)) / len(word_set(a) | word_set(b))

    assert jac("The room was spotless and the staff were friendly.",
               "The room was spotless, and the staff were very friendly!") >= MAX_JACCARD
    assert jac("The food was bland.", "The food was cold.") < MAX_JACCARD


def test_generator_reproduces_the_committed_files(splits):
    from tools import make_sentiment_data as gen
    generated, _ = gen.Gen().generate()
    for split in SIZES:
        committed = (ROOT / "data" / "sentiment" / f"{split}.csv").read_text(encoding="utf-8")
        assert gen.to_csv(generated[split]) == committed, split


def test_hard_cases_are_present(splits):
    """Negation and contrast occur in every split, with both labels (so word polarity is not enough)."""
    for rows in splits.values():
        for cue in (r"n't\b|\bnot\b|\bnothing\b|\bfar from\b|\banything but\b", r"\bbut\b|\balthough\b|\bdespite\b"):
            labels = Counter(r["label"] for r in rows if re.search(cue, r["text"]))
            assert min(labels[lab] for lab in LABELS) >= 0.1 * len(rows) / 2, (cue, labels)


# ------------------------------------------------------------------------------ the loader
def test_label_mappings():
    assert LABELS == ("negative", "positive")
    assert label_ids == {"negative": 0, "positive": 1}
    assert domain_ids == {d: i for i, d in enumerate(DOMAINS)}
    assert set(DOMAINS) >= {"movie", "product", "restaurant", "hotel"}


def test_bad_split_raises_with_the_allowed_names():
    with pytest.raises(ValueError, match="'train', 'validation', 'test'"):
        load_sentiment("valid")


def test_data_dir_is_the_repository_data_folder(monkeypatch, tmp_path):
    assert data.data_dir() == ROOT / "data" / "sentiment"
    assert data.data_dir("instructions") == ROOT / "data" / "instructions"
    monkeypatch.setattr(data, "__file__", str(tmp_path / "minilora" / "data.py"))
    with pytest.raises(FileNotFoundError, match="pip install -e"):
        load_sentiment("train")


def test_loader_pads_each_batch_to_its_longest(splits, tokenizer):
    rows = splits["validation"][:100]
    lengths = [len(tokenizer(r["text"])["input_ids"]) for r in rows]
    loader = make_loader(rows, tokenizer, batch_size=16, max_length=64)
    seen, widths = 0, set()
    for batch in loader:
        assert set(batch) == {"input_ids", "attention_mask", "labels"}
        n = batch["input_ids"].shape[0]
        own = lengths[seen:seen + n]
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (n, max(own))
        assert batch["attention_mask"].sum(1).tolist() == own
        assert batch["labels"].dtype == torch.long
        assert batch["labels"].tolist() == [label_ids[r["label"]] for r in rows[seen:seen + n]]
        seen += n
        widths.add(batch["input_ids"].shape[1])
    assert seen == len(rows)
    assert len(widths) > 1  # dynamic: batches differ in width


def test_loader_truncates_to_max_length(splits, tokenizer):
    batch = next(iter(make_loader(splits["train"], tokenizer, batch_size=8, max_length=10)))
    assert batch["input_ids"].shape[1] == 10
    last = batch["attention_mask"].sum(1) - 1  # every row, truncated or not, still ends with [SEP]
    assert (batch["input_ids"][torch.arange(8), last] == tokenizer.sep_token_id).all()
    assert (batch["attention_mask"].sum(1) == 10).any()


def test_loader_domain_task(splits, tokenizer):
    rows = splits["test"][:40]
    labels = torch.cat([b["labels"] for b in make_loader(rows, tokenizer, task="domain", batch_size=16)])
    assert labels.tolist() == [domain_ids[r["domain"]] for r in rows]
    assert labels.max().item() < len(DOMAINS)


def test_shuffle_is_seeded_and_covers_every_row(splits, tokenizer):
    rows = splits["validation"][:64]

    def order(seed):
        loader = make_loader(rows, tokenizer, task="domain", batch_size=8, shuffle=True, seed=seed)
        return torch.cat([b["input_ids"][:, 1] for b in loader]).tolist(), torch.cat([b["labels"] for b in loader])

    a, b, c = order(0), order(0), order(1)
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert a[0] != c[0]
    assert sorted(a[1].tolist()) == sorted(domain_ids[r["domain"]] for r in rows)
    unshuffled = torch.cat([b["input_ids"][:, 1] for b in make_loader(rows, tokenizer, batch_size=8)]).tolist()
    assert a[0] != unshuffled and sorted(a[0]) == sorted(unshuffled)


def test_group_by_length_pads_less_and_is_seeded_per_epoch(splits, tokenizer):
    rows = splits["train"]

    def epochs(loader, n=2):
        return [[tuple(b["input_ids"].shape) + (int(b["labels"].sum()),) for b in loader] for _ in range(n)]

    grouped = make_loader(rows, tokenizer, batch_size=16, shuffle=True, seed=0, group_by_length=True)
    plain = make_loader(rows, tokenizer, batch_size=16, shuffle=True, seed=0)
    first, second = epochs(grouped)
    assert first == epochs(make_loader(rows, tokenizer, batch_size=16, shuffle=True, seed=0, group_by_length=True))[0]
    assert first != second  # a new grouping every epoch
    assert len(first) == len(grouped) == 100 and sum(shape[0] for shape in first) == len(rows)
    assert sum(b[2] for b in first) == sum(r["label"] == "positive" for r in rows)  # every review once
    def positions(epoch):
        return sum(b[0] * b[1] for b in epoch)
    assert positions(first) < 0.8 * positions(epochs(plain, 1)[0])
    ordered = make_loader(rows, tokenizer, batch_size=100, group_by_length=True)  # for evaluation
    widths = [b["input_ids"].shape[1] for b in ordered]
    assert widths == sorted(widths) and sum(b["input_ids"].shape[0] for b in ordered) == len(rows)
    assert widths == [b["input_ids"].shape[1] for b in ordered]


@pytest.mark.parametrize("kwargs, error", [
    ({"task": "topic"}, "'sentiment', 'domain'"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_length": 1}, "max_length"),
])
def test_loader_rejects_bad_arguments(splits, tokenizer, kwargs, error):
    with pytest.raises(ValueError, match=error):
        make_loader(splits["test"], tokenizer, **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"batch_size": True}, "batch_size"), ({"batch_size": 16.0}, "batch_size"), ({"max_length": "64"}, "max_length"),
    ({"shuffle": 1}, "shuffle"), ({"group_by_length": None}, "group_by_length"),
])
def test_loader_arguments_of_the_wrong_type_are_type_errors(splits, kwargs, name):
    with pytest.raises(TypeError, match=f"^{name} must be"):
        make_loader(splits["test"], lambda texts: None, **kwargs)


def test_length_grouping_checks_its_arguments():
    with pytest.raises(ValueError, match="^window must be an integer >= 1"):
        data.length_grouped_batches([3, 4], batch_size=2, window=0)
    with pytest.raises(TypeError, match="^batch_size must be an integer"):
        data.LengthGroupedBatchSampler([3, 4], batch_size=2.0)


def test_loader_rejects_bad_rows(tokenizer):
    with pytest.raises(ValueError, match="negative"):
        make_loader([{"text": "Fine.", "label": "neutral", "domain": "movie"}], tokenizer)
    with pytest.raises(ValueError, match="non-empty"):
        make_loader([], tokenizer)
    with pytest.raises(TypeError, match="text"):
        make_loader([{"label": "positive"}], tokenizer)
