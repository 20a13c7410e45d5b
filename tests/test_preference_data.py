"""The preference data (chapter 15): reproducible, held out, and every pair differs in the property it checks."""
import importlib.util
from pathlib import Path

import pytest

from minilora.course.preference_data import PROPERTIES, load_preferences, satisfies, win_rate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def splits():
    return {s: load_preferences(s) for s in ("train", "validation", "test")}


def generator():
    spec = importlib.util.spec_from_file_location("make_preference_data", ROOT / "tools" / "make_preference_data.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def test_files_are_what_the_generator_makes():
    gen = generator()
    for split, rows in gen.build().items():
        assert (ROOT / "data" / "preference" / f"{split}.jsonl").read_text(encoding="utf-8") == gen.to_jsonl(rows)


def test_sizes_and_balance(splits):
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [320, 100, 100]
    for rows in splits.values():
        counts = {p: sum(r["property"] == p for r in rows) for p in PROPERTIES}
        assert len(set(counts.values())) == 1, counts


def test_chosen_satisfies_and_rejected_does_not(splits):
    for rows in splits.values():
        for r in rows:
            assert satisfies(r, r["chosen"]), r
            assert not satisfies(r, r["rejected"]), r
            assert r["chosen"] != r["rejected"]


def test_splits_are_held_out(splits):
    gen = generator()
    prompts = [{r["prompt"] for r in rows} for rows in splits.values()]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    train_text = " ".join(r["prompt"] for r in splits["train"])
    for held in (splits["validation"], splits["test"]):
        for r in held:  # topics, titles, categories, kinds of request and names training never saw
            if r["property"] == "word_limit":
                assert not any(topic in r["prompt"] for topic, _, _ in gen.TOPICS["train"])
                assert any(topic in r["prompt"] for topic, _, _ in gen.TOPICS["heldout"])
            if r["property"] == "json_only":
                assert r["check"]["json"]["title"] not in train_text
            if r["property"] == "numbered_list":
                assert not any(c in r["prompt"] for c in gen.CATEGORIES["train"])
            if r["property"] == "decline":
                name = next(n for n in gen.NAMES["heldout"] if n in r["prompt"])
                assert name not in train_text
                assert not any(r["prompt"].startswith(req.split("{")[0]) for req, _, _ in gen.REQUESTS["train"])


@pytest.mark.parametrize("row, answer, expected", [
    ({"property": "word_limit", "check": {"max_words": 3}}, "one two three", True),
    ({"property": "word_limit", "check": {"max_words": 3}}, "one two three four", False),
    ({"property": "word_limit", "check": {"max_words": 3}}, "   ", False),
    ({"property": "json_only", "check": {"json": {"a": 1}}}, ' {"a": 1}\n', True),
    ({"property": "json_only", "check": {"json": {"a": 1}}}, '{"a": 2}', False),
    ({"property": "json_only", "check": {"json": {"a": 1}}}, 'JSON: {"a": 1}', False),
    ({"property": "numbered_list", "check": {"items": 2}}, "1. oak\n2. elm", True),
    ({"property": "numbered_list", "check": {"items": 2}}, "1. oak\n2. elm\n3. ash", False),
    ({"property": "numbered_list", "check": {"items": 2}}, "2. oak\n1. elm", False),
    ({"property": "numbered_list", "check": {"items": 2}}, "Sure:\n1. oak\n2. elm", False),
    ({"property": "decline", "check": {"declines": True}}, "I\u2019m sorry, but no.", True),
    ({"property": "decline", "check": {"declines": True}}, "I cannot do that.", True),
    ({"property": "decline", "check": {"declines": True}}, "Sure! Here it is.", False),
    ({"property": "decline", "check": {"declines": True}}, "Sorrynot sorry", False),
])
def test_satisfies(row, answer, expected):
    assert satisfies(row, answer) is expected


def test_win_rate_and_refusals(splits):
    rows = splits["test"][:4]
    assert win_rate([r["chosen"] for r in rows], rows)["overall"] == 100.0
    scores = win_rate([rows[0]["chosen"]] + [r["rejected"] for r in rows[1:]], rows)
    assert scores["overall"] == 25.0 and scores[rows[0]["property"]] > 0
    with pytest.raises(ValueError, match="do not pair up"):
        win_rate(["x"], rows)
    with pytest.raises(ValueError, match="unknown property 'tone'"):
        satisfies({"property": "tone", "check": {}}, "x")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_preferences("dev")
