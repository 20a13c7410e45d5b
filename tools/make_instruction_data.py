"""Generate the course's instruction dataset: data/instructions/*.jsonl.

    python tools/make_instruction_data.py           # regenerate the six JSONL files
    python tools/make_instruction_data.py --check   # regenerate in memory, compare with the files

Chapter 07 instruction-tunes SmolLM2-135M-Instruct on four skills that the base model gets wrong
and that can be scored automatically by exact match:

* iso_date   - write a date given in words as YYYY-MM-DD   ("March 5th, 2021" -> "2021-03-05");
* arithmetic - add or subtract two-digit numbers and give the number only ("47 + 38" -> "85");
* sentiment  - one lower-case word, positive or negative, for a short review;
* json       - exactly one JSON object with the keys name, age and city, and nothing after it.

Every row is ``{"skill", "instruction", "response"}``. The instructions are written from a few
hand-written phrasings per skill, filled in by one ``random.Random(SEED)``, so the output is
byte-for-byte reproducible. The test split is held out for real:

* no instruction appears in two splits;
* the sentiment reviews of validation/test use subjects and opinion words that training never saw;
* the names and cities of the json rows of validation/test never occur in training.

Chapter 14 draws loss curves on a larger set from the same skills, phrasings and pools: ``large_train``
(500 rows per skill), ``large_validation`` and ``large_test`` (40 each). They are generated after chapter
07's three splits, from the same random stream and the same set of instructions already used, so chapter
07's files do not change and no instruction appears in any two of the six files. ``large_train`` uses the
training pools; ``large_validation`` and ``large_test`` the held-out ones.
"""
from __future__ import annotations

import argparse
import calendar
import json
import random
import sys
from pathlib import Path

from minilora.files import write_atomic

SEED = 2024
OUT = Path(__file__).resolve().parent.parent / "data" / "instructions"
SPLITS = {"train": 120, "validation": 20, "test": 30,  # rows per skill; chapter 07
          "large_train": 500, "large_validation": 40, "large_test": 40}  # chapter 14's loss curves
SKILLS = ("iso_date", "arithmetic", "sentiment", "json")

DATE_PHRASINGS = [
    "Write {date} as an ISO date (YYYY-MM-DD).",
    "Convert this date to ISO format (YYYY-MM-DD): {date}",
    "What is {date} in YYYY-MM-DD format?",
]
MATH_PHRASINGS = [
    "What is {a} {op} {b}? Answer with the number only.",
    "Compute {a} {op} {b}. Reply with just the number.",
    "{a} {op} {b} = ? Give only the result.",
]
SENTIMENT_PHRASINGS = [
    "Is this review positive or negative? Answer with one word.\n{review}",
    "Classify the sentiment of this review as positive or negative.\nReview: {review}",
    "Review: {review}\nSentiment (positive or negative)?",
]
JSON_PHRASINGS = [
    'Return a JSON object with the keys "name", "age" and "city" for: {text}',
    "Extract name, age and city as JSON: {text}",
    "Give only JSON with name, age, city. Text: {text}",
]
PERSON_TEXTS = [
    "{name} is {age} years old and lives in {city}.",
    "{name}, {age}, is from {city}.",
    "Meet {name} from {city}, who is {age}.",
    "{name} ({age}) moved to {city} last year.",
]

# Sentiment pieces: (subjects, positive words, negative words), one pool for training and one for
# validation/test, so held-out reviews use words the adapter never saw paired with a label.
REVIEW_TEXTS = ["The {thing} was {word}.", "The {thing} was {word}, really {word2}.",
                "Honestly, the {thing} was {word}."]
POOLS = {
    "train": (
        ["pasta", "hotel room", "film", "phone", "service", "concert", "book", "coffee", "staff", "laptop",
         "pizza", "train ride", "museum", "headphones", "soup", "show"],
        ["wonderful", "excellent", "delightful", "fantastic", "superb", "lovely", "brilliant", "great",
         "amazing", "charming"],
        ["terrible", "awful", "disappointing", "horrible", "dreadful", "boring", "poor", "bland",
         "useless", "rude"],
    ),
    "heldout": (
        ["burger", "apartment", "movie", "tablet", "waiter", "festival", "novel", "tea", "guide", "camera",
         "salad", "flight", "gallery", "speaker", "curry", "play"],
        ["outstanding", "marvellous", "pleasant", "perfect", "impressive", "enjoyable", "splendid", "terrific"],
        ["nasty", "miserable", "mediocre", "unpleasant", "annoying", "pathetic", "lousy", "dismal"],
    ),
}
NAMES = {
    "train": ["Alice", "Bruno", "Chen", "Dana", "Emeka", "Fatima", "Gustav", "Hana", "Ivan", "Jamal",
              "Kira", "Luis", "Maya", "Noah", "Olga", "Priya", "Quentin", "Rosa", "Sven", "Tariq"],
    "heldout": ["Uma", "Victor", "Wanda", "Xavier", "Yusuf", "Zoe", "Amara", "Boris", "Clara", "Diego",
                "Elif", "Farid"],
}
CITIES = {
    "train": ["Paris", "Lagos", "Osaka", "Lima", "Oslo", "Cairo", "Denver", "Madrid", "Seoul", "Quito",
              "Dublin", "Hanoi"],
    "heldout": ["Berlin", "Nairobi", "Toronto", "Lisbon", "Manila", "Prague", "Austin", "Mumbai"],
}


def _ordinal(d: int) -> str:
    suffix = "th" if 11 <= d % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
    return f"{d}{suffix}"


def iso_date(rng: random.Random, pool: str) -> dict:
    y, m = rng.randint(1950, 2035), rng.randint(1, 12)
    d = rng.randint(1, calendar.monthrange(y, m)[1])
    month, mon = calendar.month_name[m], calendar.month_abbr[m]
    date = rng.choice([f"{month} {_ordinal(d)}, {y}", f"{d} {month} {y}", f"{mon} {d}, {y}",
                       f"{month} {d}, {y}", f"the {_ordinal(d)} of {month} {y}"])
    return {"instruction": rng.choice(DATE_PHRASINGS).format(date=date), "response": f"{y:04d}-{m:02d}-{d:02d}"}


def arithmetic(rng: random.Random, pool: str) -> dict:
    a, b, op = rng.randint(10, 99), rng.randint(10, 99), rng.choice("+-")
    if op == "-" and a < b:
        a, b = b, a
    return {"instruction": rng.choice(MATH_PHRASINGS).format(a=a, b=b, op=op),
            "response": str(a + b if op == "+" else a - b)}


def sentiment(rng: random.Random, pool: str) -> dict:
    things, pos, neg = POOLS[pool]
    label = rng.choice(["positive", "negative"])
    word, word2 = rng.sample(pos if label == "positive" else neg, 2)
    review = rng.choice(REVIEW_TEXTS).format(thing=rng.choice(things), word=word, word2=word2)
    return {"instruction": rng.choice(SENTIMENT_PHRASINGS).format(review=review), "response": label}


def person_json(rng: random.Random, pool: str) -> dict:
    name, city, age = rng.choice(NAMES[pool]), rng.choice(CITIES[pool]), rng.randint(18, 90)
    text = rng.choice(PERSON_TEXTS).format(name=name, age=age, city=city)
    return {"instruction": rng.choice(JSON_PHRASINGS).format(text=text),
            "response": json.dumps({"name": name, "age": age, "city": city})}


MAKERS = {"iso_date": iso_date, "arithmetic": arithmetic, "sentiment": sentiment, "json": person_json}


def build() -> dict[str, list[dict]]:
    """All splits, as lists of rows; deterministic."""
    rng = random.Random(SEED)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, n in SPLITS.items():
        pool = "train" if split in ("train", "large_train") else "heldout"
        rows = []
        for skill in SKILLS:
            count = 0
            while count < n:
                row = MAKERS[skill](rng, pool)
                if row["instruction"] in seen:
                    continue
                seen.add(row["instruction"])
                rows.append({"skill": skill, **row})
                count += 1
        rng.shuffle(rows)
        splits[split] = rows
    return splits


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare a fresh build with the files")
    args = parser.parse_args()
    splits = build()
    if args.check:
        bad = [s for s, rows in splits.items()
               if not (OUT / f"{s}.jsonl").exists()
               or (OUT / f"{s}.jsonl").read_text(encoding="utf-8") != to_jsonl(rows)]
        print("up to date" if not bad else f"differs from a fresh build: {bad}")
        return 1 if bad else 0
    for split, rows in splits.items():
        write_atomic(OUT / f"{split}.jsonl", to_jsonl(rows))
        counts = {k: sum(r["skill"] == k for r in rows) for k in SKILLS}
        print(f"{split}: {len(rows)} rows {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
