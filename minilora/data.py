"""The course's sentiment dataset and a batching loader for it.  (Chapters 05 and 06)

``data/sentiment/{train,validation,test}.csv`` hold 2,400 short English reviews written for the
course (1,600 / 400 / 400), each labelled ``negative`` or ``positive`` and tagged with one of four
domains (movie, product, restaurant, hotel), exactly balanced by label within every domain and
split. Many reviews turn on negation ("The plot wasn't predictable at all."), contrast ("The food
was great, but the service was truly awful.") or understatement, so a bag of words gets only about
three quarters of the test set right while a fine-tuned encoder does much better. The data card is
``data/README.md``. Chapter 05 fine-tunes MiniLM with LoRA on the ``sentiment`` task; chapter 06
uses the ``domain`` task (which of the four domains) for a second adapter to swap with the first.

``make_loader`` pads each batch only to its own longest sequence (dynamic padding): with
$B$ reviews of lengths $n_1..n_B$ a batch is a $B \\times \\max_i \\min(n_i, L)$ tensor, where $L$ is
``max_length``, rather than $B \\times L$, which saves compute on short texts.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch.utils.data import DataLoader

SPLITS = ("train", "validation", "test")
LABELS = ("negative", "positive")
DOMAINS = ("movie", "product", "restaurant", "hotel")
TASKS = ("sentiment", "domain")
#: The class names of each task, in label-id order: ``num_labels=len(TASK_LABELS[task])``.
TASK_LABELS = {"sentiment": LABELS, "domain": DOMAINS}
label_ids = {name: i for i, name in enumerate(LABELS)}
domain_ids = {name: i for i, name in enumerate(DOMAINS)}
COLUMNS = ("text", "label", "domain")


def data_dir() -> Path:
    """The repository's ``data/`` folder (found next to the ``minilora`` package)."""
    path = Path(__file__).resolve().parent.parent / "data"
    if not (path / "sentiment").is_dir():
        raise FileNotFoundError(
            f"the course data is not at {path / 'sentiment'}. minilora must be installed from a "
            "checkout of the course repository with `pip install -e .` (the Makefile does this), so "
            "that data/ sits next to the minilora/ package."
        )
    return path


def load_sentiment(split: str) -> list[dict]:
    """Rows ``{"text", "label", "domain"}`` of one split: ``"train"``, ``"validation"`` or ``"test"``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(map(repr, SPLITS))}")
    path = data_dir() / "sentiment" / f"{split}.csv"
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path} has columns {reader.fieldnames}, expected {list(COLUMNS)}")
        rows = [{k: row[k] for k in COLUMNS} for row in reader]
    for i, row in enumerate(rows):
        if row["label"] not in label_ids or row["domain"] not in domain_ids or not row["text"].strip():
            raise ValueError(f"{path}, row {i + 2}: bad row {row}")
    return rows


def _target(row: dict, task: str) -> int:
    key, ids = ("label", label_ids) if task == "sentiment" else ("domain", domain_ids)
    if key not in row or row[key] not in ids:
        raise ValueError(f"row {row!r} has no valid {key!r} for task {task!r}; allowed: {list(ids)}")
    return ids[row[key]]


def make_loader(rows: list[dict], tokenizer, *, task: str = "sentiment", batch_size: int = 32,
                max_length: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader of dicts ``{input_ids, attention_mask, labels}``, padded per batch.

    ``task="sentiment"`` gives labels from ``label_ids``; ``task="domain"`` from ``domain_ids``.
    Texts longer than ``max_length`` tokens are truncated. ``shuffle=True`` draws the order from a
    ``torch.Generator`` seeded with ``seed``, so two loaders built alike give the same batches."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(map(repr, TASKS))}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    if not callable(tokenizer):
        raise TypeError("tokenizer must be a Hugging Face tokenizer, e.g. the one from minilora.models.load_encoder()")
    if isinstance(rows, (str, dict)) or len(rows) == 0:
        raise ValueError("rows must be a non-empty list of dicts with 'text' (see load_sentiment)")
    examples = []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise TypeError(f"each row must be a dict with a 'text' string, got {row!r}")
        examples.append((row["text"], _target(row, task)))

    def collate(batch: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
        enc = tokenizer([text for text, _ in batch], padding="longest", truncation=True,
                        max_length=max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([label for _, label in batch], dtype=torch.long)}

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(examples, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=collate)
