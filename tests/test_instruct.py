"""minilora.instruct: the prompt-masked collator, batched greedy generation, exact match; the data."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minilora.course.data import INSTRUCTION_SPLITS, length_grouped_batches, load_instructions, load_jsonl
from minilora.instruct import (
    CUT,
    IGNORE_INDEX,
    ChatCollator,
    answer_rows,
    contains_answer,
    encode_example,
    end_of_turn_id,
    evaluate_contains,
    evaluate_exact_match,
    exact_match,
    generate,
    left_pad,
    prompt_text,
    token_budgets,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "instructions"
ROWS = [
    {"skill": "iso_date", "instruction": "Write March 5th, 2021 as an ISO date (YYYY-MM-DD).",
     "response": "2021-03-05"},
    {"skill": "arithmetic", "instruction": "What is 47 + 38? Answer with the number only.", "response": "85"},
    {"skill": "json", "instruction": "Extract name, age and city as JSON: Alice, 31, is from Paris.",
     "response": '{"name": "Alice", "age": 31, "city": "Paris"}'},
]


@pytest.fixture(scope="module")
def tok(chat_tokenizer):
    return chat_tokenizer  # SmolLM2's (tests/conftest.py), loaded once per session


def tiny_llama(tiny, tok, seed=0):
    """conftest's tiny Llama with SmolLM2's vocabulary, in float64 (no ties in argmax)."""
    return tiny.llama(seed, vocab_size=len(tok), max_position_embeddings=256, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2).double()


# ----- collator -----------------------------------------------------------------------------
def test_end_of_turn_is_im_end(tok):
    assert tok.convert_ids_to_tokens(end_of_turn_id(tok)) == "<|im_end|>"


def test_prompt_text_follows_the_template(tok):
    p = prompt_text(tok, "hi")
    assert p == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert "SmolLM" in prompt_text(tok, "hi", system=None)  # the template's default system message


def test_labels_are_the_response_and_end_of_turn_only(tok):
    for row in ROWS:
        ex = encode_example(tok, row["instruction"], row["response"])
        ids, labels = ex["input_ids"], ex["labels"]
        assert len(ids) == len(labels)
        n_prompt = len(tok(prompt_text(tok, row["instruction"]), add_special_tokens=False)["input_ids"])
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert IGNORE_INDEX not in labels[n_prompt:]
        assert labels[n_prompt:] == ids[n_prompt:]
        assert tok.decode(labels[n_prompt:]) == row["response"] + "<|im_end|>"
        assert ids[-1] == end_of_turn_id(tok)
        # the whole sequence is the chat template's text, up to the last <|im_end|>
        full = tok.apply_chat_template([{"role": "system", "content": ""},
                                        {"role": "user", "content": row["instruction"]},
                                        {"role": "assistant", "content": row["response"]}], tokenize=False)
        assert tok.decode(ids) == full.rstrip("\n")


def test_without_mask_every_token_is_a_label(tok):
    ex = encode_example(tok, ROWS[0]["instruction"], ROWS[0]["response"], mask_prompt=False)
    assert ex["labels"] == ex["input_ids"]


def test_collator_pads_on_the_right(tok):
    batch = ChatCollator(tok)(ROWS)
    lengths = [len(encode_example(tok, r["instruction"], r["response"])["input_ids"]) for r in ROWS]
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, max(lengths))
    for i, n in enumerate(lengths):
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (max(lengths) - n)
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][i, n:] == end_of_turn_id(tok)).all()
        ex = encode_example(tok, ROWS[i]["instruction"], ROWS[i]["response"])
        assert batch["input_ids"][i, :n].tolist() == ex["input_ids"]
        assert batch["labels"][i, :n].tolist() == ex["labels"]


def test_model_loss_is_the_mean_nll_of_the_response_tokens(tiny, tok):
    model = tiny_llama(tiny, tok)
    batch = ChatCollator(tok)(ROWS)
    loss = model(**batch).loss
    nll, count = 0.0, 0
    for i, row in enumerate(ROWS):  # one example at a time, no padding, the maths of the docstring
        ex = encode_example(tok, row["instruction"], row["response"])
        ids = torch.tensor([ex["input_ids"]])
        logp = F.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        n_prompt = ex["labels"].count(IGNORE_INDEX)
        for t in range(n_prompt, len(ex["input_ids"])):  # token t is predicted at position t - 1
            nll -= logp[t - 1, ex["input_ids"][t]].item()
            count += 1
    torch.testing.assert_close(loss.item(), nll / count, rtol=1e-6, atol=1e-6)  # HF computes it in fp32
    unmasked = model(**ChatCollator(tok, mask_prompt=False)(ROWS)).loss
    assert abs(unmasked.item() - loss.item()) > 1e-3  # the mask changes what is averaged


def test_collator_rejects_bad_rows(tok):
    col = ChatCollator(tok)
    with pytest.raises(ValueError, match="response"):
        col([{"instruction": "hi"}])
    with pytest.raises(ValueError, match="empty"):
        col([])
    with pytest.raises(ValueError, match="max_length"):
        ChatCollator(tok, max_length=8)(ROWS)
    with pytest.raises(ValueError, match="non-empty"):
        col([{"instruction": "hi", "response": "  "}])
    with pytest.raises(ValueError, match="^max_length must be an integer >= 1 or None"):
        ChatCollator(tok, max_length=0)
    with pytest.raises(TypeError, match="^mask_prompt must be True or False"):
        ChatCollator(tok, mask_prompt="yes")


def test_length_grouped_batches_cover_everything_once_with_less_padding():
    import random

    rng = random.Random(1)
    lengths = [rng.randint(20, 70) for _ in range(200)]
    batches = length_grouped_batches(lengths, batch_size=16, seed=0, window=4)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert sorted(len(b) for b in batches)[1:] == [16] * (len(batches) - 1)
    assert batches == length_grouped_batches(lengths, batch_size=16, seed=0, window=4)
    assert batches != length_grouped_batches(lengths, batch_size=16, seed=1, window=4)
    def padded(bs):
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)
    order = list(range(200))
    random.Random(0).shuffle(order)
    plain = [order[i:i + 16] for i in range(0, 200, 16)]
    assert padded(batches) < 0.85 * padded(plain)
    with pytest.raises(ValueError, match="batch_size"):
        length_grouped_batches(lengths, batch_size=0)


# ----- generation ---------------------------------------------------------------------------
def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=2)
    assert ids.tolist() == [[5, 6, 7], [2, 2, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_batched_generation_equals_one_at_a_time(tiny, tok):
    model = tiny_llama(tiny, tok)
    instructions = [r["instruction"] for r in ROWS] + ["Hi", "Tell me a long story about a very small LoRA."]
    batched = generate(model, tok, instructions, max_new_tokens=6, batch_size=8)
    single = [generate(model, tok, [x], max_new_tokens=6)[0] for x in instructions]
    assert batched == single
    # the same by hand: greedy argmax without cache or padding
    end = end_of_turn_id(tok)
    for x, got in zip(instructions, batched):
        ids = tok(prompt_text(tok, x), add_special_tokens=False)["input_ids"]
        new = []
        for _ in range(6):
            nxt = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == end:
                break
            new.append(nxt)
        want = tok.decode(new, skip_special_tokens=True)
        assert got == (want if len(new) < 6 else want + CUT)


def fixed_output_model(tiny, tok, token_id):
    """A tiny Llama whose greedy choice is always ``token_id`` (a head with a dominant bias)."""
    model = tiny_llama(tiny, tok)
    head = nn.Linear(32, len(tok), bias=True).double()
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = 10.0
    model.lm_head = head
    return model


def test_generation_stops_at_end_of_turn(tiny, tok):
    model = fixed_output_model(tiny, tok, end_of_turn_id(tok))
    assert generate(model, tok, ["a", "bb bb"], max_new_tokens=5) == ["", ""]


def test_an_answer_that_does_not_end_is_marked_cut(tiny, tok):
    x = tok.convert_tokens_to_ids("x")
    model = fixed_output_model(tiny, tok, x)
    (answer,) = generate(model, tok, ["a"], max_new_tokens=4)
    assert answer == "xxxx" + CUT
    assert not exact_match(answer, "xxxx")


def test_generation_keeps_the_input_order_and_the_training_mode(tiny, tok):
    model = tiny_llama(tiny, tok).train()
    xs = ["a much longer instruction than the others", "b", "c c c"]
    out = generate(model, tok, xs, max_new_tokens=3, batch_size=2)
    assert out == [generate(model, tok, [x], max_new_tokens=3)[0] for x in xs]
    assert model.training


def test_answer_rows_uses_each_skills_budget(tiny, tok):
    x = tok.convert_tokens_to_ids("x")
    model = fixed_output_model(tiny, tok, x)
    out = answer_rows(model, tok, ROWS, {"iso_date": 2, "arithmetic": 1, "json": 3})
    assert out == ["xx" + CUT, "x" + CUT, "xxx" + CUT]
    with pytest.raises(ValueError, match="no budget"):
        answer_rows(model, tok, ROWS, {"iso_date": 2})
    budgets = token_budgets(tok, ROWS, slack=2)
    assert budgets["arithmetic"] == len(tok("85", add_special_tokens=False)["input_ids"]) + 3


def test_generate_rejects_bad_arguments(tiny, tok):
    model = tiny_llama(tiny, tok)
    with pytest.raises(TypeError, match="list"):
        generate(model, tok, "one instruction")
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tok, ["a"], max_new_tokens=0)
    for bad in (True, 2.0):  # a bool or a float is not a token count
        with pytest.raises(TypeError, match="^max_new_tokens must be an integer"):
            generate(model, tok, ["a"], max_new_tokens=bad)
    with pytest.raises(TypeError, match="^batch_size must be an integer"):
        generate(model, tok, ["a"], batch_size=1.5)
    with pytest.raises(ValueError, match="max_new_tokens for skill 'json'"):  # refused before any answer
        answer_rows(model, tok, ROWS, {"iso_date": 2, "arithmetic": 2, "json": 0})
    with pytest.raises(ValueError, match="^slack must be an integer >= 0"):
        token_budgets(tok, ROWS, slack=-1)


# ----- exact match --------------------------------------------------------------------------
def test_exact_match():
    assert exact_match(" 85\n", "85")
    assert not exact_match("85.", "85")
    assert not exact_match("Positive", "positive")
    assert not exact_match("47 + 38 = 85", "85")
    ref = '{"name": "Alice", "age": 31}'
    assert exact_match('{"age":31,"name":"Alice"}', ref, as_json=True)
    assert not exact_match('{"name": "Alice", "age": "31"}', ref, as_json=True)
    assert not exact_match(ref + "\nThis JSON object has two keys.", ref, as_json=True)
    assert not exact_match("not json", ref, as_json=True)
    with pytest.raises(TypeError):
        exact_match(85, "85")


def test_evaluate_exact_match_per_skill():
    preds = ["2021-03-05", "84", '{"city": "Paris", "name": "Alice", "age": 31}']
    scores = evaluate_exact_match(preds, ROWS)
    assert scores == {"arithmetic": 0.0, "iso_date": 100.0, "json": 100.0, "overall": pytest.approx(200 / 3)}
    with pytest.raises(ValueError, match="pair up"):
        evaluate_exact_match(preds[:2], ROWS)


# ----- the dataset --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def splits():
    return {s: load_instructions(s) for s in INSTRUCTION_SPLITS}


def test_dataset_sizes_and_fields(splits):
    assert len(splits["train"]) >= 400 and len(splits["test"]) >= 100
    skills = {r["skill"] for r in splits["train"]}
    assert 3 <= len(skills) <= 5
    for rows in splits.values():
        assert {r["skill"] for r in rows} == skills
        for r in rows:
            assert set(r) == {"skill", "instruction", "response"} and r["instruction"] and r["response"]
            if r["skill"] == "json":
                assert isinstance(json.loads(r["response"]), dict)


def test_test_split_is_held_out(splits):
    seen = {}
    for split, rows in splits.items():  # no instruction in any two of the six files
        for r in rows:
            assert seen.setdefault(r["instruction"], split) == split, (r["instruction"], seen[r["instruction"]], split)
    trained = {w for s in ("train", "large_train") for r in splits[s] if r["skill"] in ("sentiment", "json")
               for w in r["instruction"].replace(".", " ").replace(",", " ").split()}
    for split in ("validation", "test", "large_validation", "large_test"):  # held-out opinion words, names, cities
        for r in splits[split]:
            if r["skill"] == "json":
                person = json.loads(r["response"])
                assert person["name"] not in trained and person["city"] not in trained
    assert len(splits["large_train"]) == 2000 and len(splits["large_validation"]) == len(splits["large_test"]) == 160


def test_dataset_is_what_the_generator_makes():
    spec = importlib.util.spec_from_file_location("make_instruction_data", ROOT / "tools" / "make_instruction_data.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for split, rows in gen.build().items():
        assert (DATA / f"{split}.jsonl").read_text(encoding="utf-8") == gen.to_jsonl(rows)


def test_every_training_example_masks_cleanly(splits, tok):
    col = ChatCollator(tok, max_length=96)
    for r in splits["train"]:
        ex = col.encode(r)
        trained = [t for t in ex["labels"] if t != IGNORE_INDEX]
        assert tok.decode(trained) == r["response"] + "<|im_end|>"


def test_load_jsonl_errors(tmp_path):
    with pytest.raises(ValueError, match="validation"):
        load_instructions("dev")
    with pytest.raises(FileNotFoundError):
        load_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_jsonl(bad)


AMARA = '{"name": "Amara", "age": 79, "city": "Nairobi"}'


@pytest.mark.parametrize("prediction, reference, as_json, expected", [
    ("The answer is 48.", "48", False, True),
    ("148", "48", False, False),  # a whole number, not a piece of one
    ("48", "48", False, True),
    ("Sentiment:  NEGATIVE\n", "negative", False, True),  # case and whitespace do not matter
    ("The play was lousy", "negative", False, False),
    ("It is 1966-05-08, I think", "1966-05-08", False, True),
    ("2022-05-08", "1966-05-08", False, False),
    ("May 8th,   1966", "may 8th, 1966", False, True),
    ('Here you go: {"age": 79, "name": "Amara", "city": "Nairobi"} Anything else?', AMARA, True, True),
    ('{\n  "name": "Amara",\n  "age": 79,\n  "city": "Koelu [...]', AMARA, True, False),
    ('{"name": "Amara"} {"name": "Amara", "age": 79, "city": "Nairobi"}', AMARA, True, True),
])
def test_contains_answer_is_lenient_about_format_only(prediction, reference, as_json, expected):
    assert contains_answer(prediction, reference, as_json=as_json) is expected
    if expected and exact_match(prediction, reference, as_json=as_json):
        assert contains_answer(prediction, reference, as_json=as_json)  # exact implies contained


def test_a_reference_that_is_not_json_is_an_error_a_prediction_that_is_not_is_a_miss():
    for match in (exact_match, contains_answer):
        assert match("no JSON here {oops", AMARA, as_json=True) is False  # the model's answer: simply wrong
        with pytest.raises(ValueError, match=r"the reference answer 'Amara, 79' is not valid JSON.*as_json=False"):
            match(AMARA, "Amara, 79", as_json=True)  # the caller's data: a bug to report, never a silent 0
        assert match("Amara, 79", "Amara, 79") is True  # as text it is fine
    rows = [{"skill": "json", "response": "Amara, 79"}]
    with pytest.raises(ValueError, match="not valid JSON"):
        evaluate_exact_match([AMARA], rows)
    with pytest.raises(ValueError, match="not valid JSON"):
        evaluate_contains([AMARA], rows)


def test_evaluate_contains_scores_per_skill():
    rows = [{"skill": "a", "response": "48"}, {"skill": "a", "response": "12"},
            {"skill": "json", "response": '{"x": 1}'}]
    preds = ["It is 48.", "12", 'ok {"x": 1} done']
    assert evaluate_contains(preds, rows) == {"a": 100.0, "json": 100.0, "overall": 100.0}
    assert evaluate_exact_match(preds, rows) == {"a": 50.0, "json": 0.0, "overall": 100 / 3}
    with pytest.raises(ValueError, match="pair up"):
        evaluate_contains(preds[:2], rows)
