"""The course's datasets and a batching loader.  (Chapters 05, 06 and 07)

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
``max_length``, rather than $B \\times L$, which saves compute on short texts. With ``group_by_length=True`` the
batches also hold reviews of similar length (``length_grouped_batches``), so that little of each
batch is padding: on the course data about a third fewer token positions per epoch.

``load_instructions`` reads chapter 07's instruction data, ``data/instructions/{split}.jsonl``: rows
``{"skill", "instruction", "response"}`` for four skills (see ``data/README.md``). Chapter 14's loss curves use
the larger ``large_train`` / ``large_validation`` / ``large_test`` splits of the same skills.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

from ..utils import check_bool, check_int

__all__ = ["SPLITS", "LABELS", "DOMAINS", "TASKS", "TASK_LABELS", "label_ids", "domain_ids", "COLUMNS", "data_dir",
           "load_sentiment", "length_grouped_batches", "LengthGroupedBatchSampler", "make_loader",
           "load_instructions", "INSTRUCTION_SPLITS", "load_jsonl", "check_task"]

SPLITS = ("train", "validation", "test")
#: Chapter 07's three splits, then chapter 14's larger ones (500 / 40 / 40 rows per skill).
INSTRUCTION_SPLITS = SPLITS + ("large_train", "large_validation", "large_test")
LABELS = ("negative", "positive")
DOMAINS = ("movie", "product", "restaurant", "hotel")
TASKS = ("sentiment", "domain")
#: The class names of each task, in label-id order: ``num_labels=len(TASK_LABELS[task])``.
TASK_LABELS = {"sentiment": LABELS, "domain": DOMAINS}
label_ids = {name: i for i, name in enumerate(LABELS)}
domain_ids = {name: i for i, name in enumerate(DOMAINS)}
COLUMNS = ("text", "label", "domain")


def check_task(task: str) -> None:
    """A ValueError naming the tasks there are, unless ``task`` is one of ``TASKS``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(map(repr, TASKS))}")


def data_dir(dataset: str = "sentiment") -> Path:
    """The folder of one of the course's datasets, ``data/<dataset>`` next to the ``minilora`` package."""
    path = Path(__file__).resolve().parents[2] / "data" / dataset
    if not path.is_dir():
        raise FileNotFoundError(
            f"the course data is not at {path}. minilora must be installed from a checkout of the course "
            "repository with `pip install -e .` (the Makefile does this), so that data/ sits next to the "
            "minilora/ package."
        )
    return path


def load_sentiment(split: str) -> list[dict]:
    """Rows ``{"text", "label", "domain"}`` of one split: ``"train"``, ``"validation"`` or ``"test"``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(map(repr, SPLITS))}")
    path = data_dir("sentiment") / f"{split}.csv"
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


def _check_grouping(batch_size: int, window: int) -> None:
    check_int(batch_size, "batch_size")
    check_int(window, "window")


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int = 0,
                           window: int = 8) -> list[list[int]]:
    """Shuffled batches of indices in which the examples have similar lengths (less padding).

    The indices are shuffled, sorted by length within windows of ``window * batch_size``, cut into
    batches, and the batches shuffled again. Use it as ``DataLoader(rows, batch_sampler=...)``."""
    _check_grouping(batch_size, window)
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), window * batch_size):
        chunk = sorted(order[start:start + window * batch_size], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class LengthGroupedBatchSampler(Sampler):
    """A batch sampler over ``length_grouped_batches``: a new grouping every epoch, seeded.

    Two samplers built with the same ``seed`` give the same batches, epoch after epoch."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, window: int = 8) -> None:
        _check_grouping(batch_size, window)
        self.lengths, self.batch_size, self.window = list(lengths), batch_size, window
        self._rng = random.Random(seed)

    def __iter__(self) -> Iterator[list[int]]:
        yield from length_grouped_batches(self.lengths, self.batch_size, self._rng.randrange(2**32), self.window)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def make_loader(rows: list[dict], tokenizer, *, task: str = "sentiment", batch_size: int = 32,
                max_length: int = 64, shuffle: bool = False, seed: int = 0,
                group_by_length: bool = False) -> DataLoader:
    """A DataLoader of dicts ``{input_ids, attention_mask, labels}``, padded per batch.

    ``task="sentiment"`` gives labels from ``label_ids``; ``task="domain"`` from ``domain_ids``.
    Texts longer than ``max_length`` tokens are truncated. ``shuffle=True`` draws the order from a
    ``torch.Generator`` seeded with ``seed``, so two loaders built alike give the same batches.
    ``group_by_length=True`` batches reviews of similar length together, for less padding: with
    ``shuffle=True`` in a seeded random order that changes every epoch (for training), without it
    shortest first (for evaluation, where the order does not matter)."""
    check_task(task)
    check_int(batch_size, "batch_size")
    check_int(max_length, "max_length", minimum=2)
    check_bool(shuffle, "shuffle")
    check_bool(group_by_length, "group_by_length")
    if not callable(tokenizer):
        raise TypeError("tokenizer must be a Hugging Face tokenizer, "
                        "e.g. the one from minilora.course.models.load_encoder()")
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

    if group_by_length:
        lengths = [len(ids) for ids in tokenizer([text for text, _ in examples], truncation=True,
                                                 max_length=max_length)["input_ids"]]
        if shuffle:
            sampler = LengthGroupedBatchSampler(lengths, batch_size, seed)
        else:  # evaluation: shortest reviews first, the same order every time
            order = sorted(range(len(examples)), key=lambda i: lengths[i])
            sampler = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        return DataLoader(examples, batch_sampler=sampler, collate_fn=collate)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(examples, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=collate)


def load_instructions(split: str) -> list[dict]:
    """Rows ``{"skill", "instruction", "response"}`` of the course's instruction data (chapter 07).

    ``split``: ``"train"``, ``"validation"`` (for choosing hyper-parameters) or ``"test"`` (held out); or one of
    chapter 14's larger splits of the same skills, ``"large_train"``, ``"large_validation"``, ``"large_test"``."""
    if split not in INSTRUCTION_SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(map(repr, INSTRUCTION_SPLITS))}.")
    return load_jsonl(data_dir("instructions") / f"{split}.jsonl")


def load_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSON-lines file (one JSON object per line)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; the course's instruction data is in data/instructions/.")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n} is not valid JSON: {e}") from None
    return rows
