"""The course's preference data, and the programs that score an answer.  (Chapter 15)

``data/preference/{train,validation,test}.jsonl`` (320 / 100 / 100 rows, written by
``tools/make_preference_data.py``; see ``data/README.md``) hold rows ``{"property", "prompt", "chosen",
"rejected", "check"}``: two answers to one prompt that differ in one property, which ``satisfies`` checks from
the row's ``check``:

* ``word_limit``: at most ``check["max_words"]`` words (split on white space), and at least one;
* ``json_only``: the whole answer, white space aside, is JSON equal to ``check["json"]``;
* ``numbered_list``: exactly ``check["items"]`` lines, numbered ``1.``, ``2.``, ... in order, each with an item;
* ``decline``: the answer opens with a refusal ("I'm sorry", "I can't", "I cannot", "I won't", ...).

Every chosen answer satisfies its property and every rejected one does not (``tests/test_preference_data.py``).
``win_rate`` is the share of generated answers that satisfy theirs: chapter 15's measure of what preference
tuning taught, with no judge model.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Mapping, Sequence

from .data import data_dir, load_jsonl

__all__ = ["PROPERTIES", "PREFERENCE_SPLITS", "load_preferences", "satisfies", "win_rate"]

PROPERTIES = ("word_limit", "json_only", "numbered_list", "decline")
PREFERENCE_SPLITS = ("train", "validation", "test")
_REFUSAL = re.compile(r"^(i'?m sorry|i am sorry|sorry|i can'?t|i cannot|i can not|i won'?t|i will not|"
                      r"i'?m (not able|unable)|i am (not able|unable))\b", re.IGNORECASE)


def load_preferences(split: str) -> list[dict]:
    """Rows ``{"property", "prompt", "chosen", "rejected", "check"}`` of ``split`` (train, validation or test)."""
    if split not in PREFERENCE_SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(map(repr, PREFERENCE_SPLITS))}.")
    return load_jsonl(data_dir("preference") / f"{split}.jsonl")


def satisfies(row: Mapping, answer: str) -> bool:
    """Whether ``answer`` has the property that ``row`` asks for (see the module docstring)."""
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a string, got {type(answer).__name__}.")
    prop, check = row.get("property"), row.get("check", {})
    text = answer.strip()
    if prop == "word_limit":
        return 0 < len(text.split()) <= check["max_words"]
    if prop == "json_only":
        try:
            return json.loads(text) == check["json"]
        except json.JSONDecodeError:
            return False
    if prop == "numbered_list":
        lines = text.splitlines()
        return len(lines) == check["items"] and all(re.fullmatch(rf"{i}\.\s+\S.*", line.strip())
                                                     for i, line in enumerate(lines, 1))
    if prop == "decline":
        return bool(_REFUSAL.match(text.replace("\u2019", "'")))
    raise ValueError(f"unknown property {prop!r}; a row's property is one of {', '.join(map(repr, PROPERTIES))}.")


def win_rate(answers: Sequence[str], rows: Sequence[Mapping]) -> dict[str, float]:
    """Percent of ``answers`` that satisfy their row's property: per property and ``"overall"``."""
    if len(answers) != len(rows):
        raise ValueError(f"{len(answers)} answers and {len(rows)} rows do not pair up; give one answer per row.")
    if not rows:
        raise ValueError("no rows to score.")
    wins = defaultdict(list)
    for answer, row in zip(answers, rows):
        ok = satisfies(row, answer)
        wins[row["property"]].append(ok)
        wins["overall"].append(ok)
    return {k: 100 * sum(v) / len(v) for k, v in sorted(wins.items())}
