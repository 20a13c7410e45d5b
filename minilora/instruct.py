r"""Instruction tuning a chat model: prompt-masked batches, batched greedy generation, exact match.
(Chapter 07)

A chat model reads a conversation written in its *chat template*. For SmolLM2 (ChatML) one
training example -- an instruction :math:`x` and the wanted response :math:`y` -- becomes the
token sequence

.. code-block:: text

    <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{x}<|im_end|>\n<|im_start|>assistant\n{y}<|im_end|>
    \_________________________________ prompt p (masked) ________________________________/ \_ trained _/

A causal LM factorises :math:`p(y \mid p) = \prod_t p(y_t \mid p, y_{<t})`. Instruction tuning
minimises the negative log-likelihood of the *response only*:

.. math::  \mathcal{L} = -\frac{1}{\sum_i |y^{(i)}|} \sum_i \sum_{t=1}^{|y^{(i)}|}
           \log p_\theta\big(y^{(i)}_t \mid p^{(i)}, y^{(i)}_{<t}\big)

where each :math:`y^{(i)}` ends with the end-of-turn token ``<|im_end|>``, so that the model also
learns to *stop*. In code this is the usual next-token cross-entropy with the label of every
prompt token (and of every padding token) set to ``-100``, the index that
``torch.nn.functional.cross_entropy`` ignores: those positions contribute neither to the sum nor
to the count. Without the mask the model would also spend its capacity learning to predict the
instructions, which are given at test time anyway, and the short answers would be a small
fraction of the loss.

* ``ChatCollator`` turns rows ``{"instruction", "response"}`` into right-padded training batches
  ``{"input_ids", "attention_mask", "labels"}`` (the batch protocol of ``minilora.train.fit``).
* ``generate`` answers many instructions at once: greedy decoding, left padding (so that every
  row's last prompt token sits in the last column and the new tokens line up), KV cache, and it
  stops each row at ``<|im_end|>``.
* ``exact_match`` / ``evaluate_exact_match`` score the answers: exact match after trimming
  whitespace, or equality of the parsed values for JSON answers. ``contains_answer`` /
  ``evaluate_contains`` are the lenient twins: is the right answer *somewhere* in what the model
  said? The gap between the two is format, not knowledge.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm import tqdm

from .utils import check_bool, check_int

__all__ = ["END_OF_TURN", "SYSTEM", "IGNORE_INDEX", "CUT", "end_of_turn_id", "prompt_text", "encode_example",
           "ChatCollator", "left_pad", "generate", "answer_rows", "token_budgets", "exact_match",
           "evaluate_exact_match", "normalise", "contains_answer", "evaluate_contains"]

END_OF_TURN = "<|im_end|>"
#: The system message used in chapter 07, for training and evaluation alike. An empty message keeps
#: every sequence short; without any, SmolLM2's template inserts its default one (16 tokens more).
SYSTEM = ""
IGNORE_INDEX = -100


def end_of_turn_id(tokenizer) -> int:
    """The id of ``<|im_end|>``, which closes every turn of the ChatML template."""
    tid = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if tid is None or tid == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {END_OF_TURN!r} token: these helpers expect a ChatML "
                         "chat model such as SmolLM2-135M-Instruct (minilora.course.models.load_chat_model()).")
    return tid


def _messages(instruction: str, system: str | None) -> list[dict]:
    if not isinstance(instruction, str) or not instruction:
        raise ValueError(f"an instruction must be a non-empty string, got {instruction!r}.")
    return ([] if system is None else [{"role": "system", "content": system}]) + \
        [{"role": "user", "content": instruction}]


def prompt_text(tokenizer, instruction: str, system: str | None = SYSTEM) -> str:
    """The chat-template text the model sees before it answers (ends with the assistant header).

    ``system=None`` lets the template add its default system message."""
    return tokenizer.apply_chat_template(_messages(instruction, system), tokenize=False,
                                         add_generation_prompt=True)


def encode_example(tokenizer, instruction: str, response: str, system: str | None = SYSTEM,
                   mask_prompt: bool = True) -> dict[str, list[int]]:
    """Token ids of prompt + response + ``<|im_end|>``, and labels with the prompt set to -100.

    With ``mask_prompt=False`` every token is a label (the un-masked variant of chapter 07)."""
    if not isinstance(response, str) or not response.strip():
        raise ValueError(f"a response must be a non-empty string, got {response!r}.")
    prompt = tokenizer(prompt_text(tokenizer, instruction, system), add_special_tokens=False)["input_ids"]
    full_text = tokenizer.apply_chat_template(
        _messages(instruction, system) + [{"role": "assistant", "content": response}], tokenize=False)
    full = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    end = end_of_turn_id(tokenizer)
    if full[:len(prompt)] != prompt:
        raise ValueError("the prompt's tokens are not a prefix of the whole example's tokens, so the "
                         "prompt cannot be masked by position; check the chat template.")
    # The template ends each turn with "<|im_end|>\n": keep up to and including the last <|im_end|>.
    last = len(full) - 1 - full[::-1].index(end)
    ids = full[:last + 1]
    labels = ([IGNORE_INDEX] * len(prompt) if mask_prompt else list(prompt)) + ids[len(prompt):]
    return {"input_ids": ids, "labels": labels}


class ChatCollator:
    """Batches rows ``{"instruction", "response"}`` for training a chat model on the responses.

    Each row is encoded by ``encode_example`` and the batch is padded on the right with
    ``<|im_end|>``; padded positions get ``attention_mask`` 0 and label -100. The result is a dict
    of tensors, ready for ``model(**batch).loss`` and ``minilora.train.fit``.

    Args:
        tokenizer: the chat model's tokenizer (it must know ``<|im_end|>``).
        system: the system message (the same one must be used at evaluation).
        mask_prompt: set the prompt's labels to -100 (True) or train on every token (False).
        max_length: refuse examples longer than this many tokens (None: no limit).
    """

    def __init__(self, tokenizer, system: str | None = SYSTEM, mask_prompt: bool = True,
                 max_length: int | None = None):
        check_bool(mask_prompt, "mask_prompt")
        check_int(max_length, "max_length", optional=True)
        self.tokenizer, self.system, self.mask_prompt, self.max_length = tokenizer, system, mask_prompt, max_length
        self.pad_id = end_of_turn_id(tokenizer)

    def encode(self, row: Mapping[str, str]) -> dict[str, list[int]]:
        """One row to ``{"input_ids", "labels"}`` lists (no padding)."""
        missing = [k for k in ("instruction", "response") if k not in row]
        if missing:
            raise ValueError(f"a row needs the fields 'instruction' and 'response'; missing {missing} in {dict(row)}.")
        ex = encode_example(self.tokenizer, row["instruction"], row["response"], self.system, self.mask_prompt)
        if self.max_length is not None and len(ex["input_ids"]) > self.max_length:
            raise ValueError(f"an example has {len(ex['input_ids'])} tokens > max_length={self.max_length}; "
                             "raise max_length or shorten the example (truncating would cut the answer).")
        return ex

    def __call__(self, rows: Sequence[Mapping[str, str]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty list of rows.")
        encoded = [self.encode(r) for r in rows]
        width = max(len(e["input_ids"]) for e in encoded)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, e in enumerate(encoded):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            labels[i, :n] = torch.tensor(e["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` with every sequence padded on the left to the longest."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s))
            mask[i, width - len(s):] = 1
    return ids, mask


#: Appended to an answer that had not ended (no ``<|im_end|>``) when ``max_new_tokens`` ran out.
CUT = " [...]"


@torch.no_grad()
def generate(model: nn.Module, tokenizer, instructions: Sequence[str], system: str | None = SYSTEM,
             max_new_tokens: int = 24, batch_size: int = 32, progress: bool = False) -> list[str]:
    """Greedy answers to ``instructions``, batched with left padding, each stopped at ``<|im_end|>``.

    Rows are batched in order of prompt length (less padding) and returned in the input order.
    An answer that has not ended after ``max_new_tokens`` tokens is returned cut there, marked
    with ``CUT`` at its end (so that it never counts as an exact match)."""
    if isinstance(instructions, str):
        raise TypeError("instructions must be a list of strings; wrap a single one as [instruction].")
    check_int(max_new_tokens, "max_new_tokens")
    check_int(batch_size, "batch_size")
    check_bool(progress, "progress")
    end = end_of_turn_id(tokenizer)
    prompts = [tokenizer(prompt_text(tokenizer, x, system), add_special_tokens=False)["input_ids"]
               for x in instructions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="generating", disable=not progress):
            chunk = order[start:start + batch_size]
            ids, mask = left_pad([prompts[i] for i in chunk], end)
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=end, pad_token_id=end)
            for i, row in zip(chunk, out[:, ids.shape[1]:].tolist()):
                ended = end in row
                text = tokenizer.decode(row[:row.index(end)] if ended else row, skip_special_tokens=True,
                                        clean_up_tokenization_spaces=False)
                answers[i] = text if ended else text + CUT
    finally:
        model.train(was_training)
    return answers


def answer_rows(model: nn.Module, tokenizer, rows: Sequence[Mapping[str, str]],
                max_new_tokens: int | Mapping[str, int], system: str | None = SYSTEM,
                batch_size: int = 32, progress: bool = False) -> list[str]:
    """``generate`` for dataset rows, one skill at a time so each gets its own token budget.

    ``max_new_tokens`` is an int, or a dict ``{skill: budget}`` (see ``token_budgets``)."""
    answers: list[str] = [""] * len(rows)
    by_skill: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_skill[row.get("skill", "")].append(i)
    budgets = max_new_tokens if isinstance(max_new_tokens, Mapping) else dict.fromkeys(by_skill, max_new_tokens)
    for skill in by_skill:  # every budget checked before the first answer is generated
        if skill not in budgets:
            raise ValueError(f"max_new_tokens has no budget for skill {skill!r}; it has {sorted(budgets)}.")
        check_int(budgets[skill], f"max_new_tokens for skill {skill!r}")
    for skill, idx in by_skill.items():
        outs = generate(model, tokenizer, [rows[i]["instruction"] for i in idx], system, budgets[skill], batch_size,
                        progress)
        for i, a in zip(idx, outs):
            answers[i] = a
    return answers


def token_budgets(tokenizer, rows: Iterable[Mapping[str, str]], slack: int = 2) -> dict[str, int]:
    """Per skill: the longest reference answer in tokens, + 1 for ``<|im_end|>``, + ``slack``.

    The slack lets an answer that runs on past the right one show that it does (and be cut)."""
    check_int(slack, "slack", minimum=0)
    budgets: dict[str, int] = {}
    for row in rows:
        n = len(tokenizer(row["response"], add_special_tokens=False)["input_ids"]) + 1 + slack
        budgets[row.get("skill", "")] = max(budgets.get(row.get("skill", ""), 0), n)
    return budgets


def _json_reference(reference: str):
    """The parsed reference answer; a reference that is not JSON is the caller's bug, not a wrong answer."""
    try:
        return json.loads(reference)
    except json.JSONDecodeError as err:
        raise ValueError(f"the reference answer {reference!r} is not valid JSON ({err}), so nothing can match it "
                         "as_json=True: fix the reference, or compare it as text with as_json=False.") from None


def exact_match(prediction: str, reference: str, as_json: bool = False) -> bool:
    """True when ``prediction`` equals ``reference`` after trimming whitespace.

    ``as_json``: compare the parsed JSON values instead (key order and spacing do not matter); a
    prediction that is not exactly one JSON value -- e.g. JSON followed by more text -- is wrong, and a
    reference that is not JSON is a ``ValueError`` (the caller's bug)."""
    if not isinstance(prediction, str) or not isinstance(reference, str):
        raise TypeError(f"prediction and reference must be strings, got {type(prediction).__name__} "
                        f"and {type(reference).__name__}.")
    if not as_json:
        return prediction.strip() == reference.strip()
    want = _json_reference(reference)
    try:
        return json.loads(prediction) == want
    except json.JSONDecodeError:  # a prediction that is not JSON is simply wrong
        return False


def normalise(text: str) -> str:
    """Lower case, whitespace runs collapsed to one space, ends trimmed."""
    return " ".join(text.lower().split())


def contains_answer(prediction: str, reference: str, as_json: bool = False) -> bool:
    """The lenient metric: True when the reference *appears in* the prediction, whatever else it says.

    Text: the normalised reference (``normalise``) occurs in the normalised prediction as a whole
    word or number ("48" is in "the answer is 48.", not in "148"). ``as_json``: some JSON object in
    the prediction parses to the reference's value (a reference that is not JSON: ``ValueError``). It
    separates *knowing* the answer from *giving it in the asked format*, which ``exact_match`` requires too."""
    if not isinstance(prediction, str) or not isinstance(reference, str):
        raise TypeError(f"prediction and reference must be strings, got {type(prediction).__name__} "
                        f"and {type(reference).__name__}.")
    if as_json:
        want, decoder = _json_reference(reference), json.JSONDecoder()
        for start in (i for i, ch in enumerate(prediction) if ch == "{"):
            try:
                if decoder.raw_decode(prediction, start)[0] == want:
                    return True
            except json.JSONDecodeError:
                continue
        return False
    pattern = r"(?<![\w])" + re.escape(normalise(reference)) + r"(?![\w])"
    return re.search(pattern, normalise(prediction)) is not None


def _score(predictions: Sequence[str], rows: Sequence[Mapping[str, str]], match, json_skills) -> dict[str, float]:
    if len(predictions) != len(rows):
        raise ValueError(f"got {len(predictions)} predictions for {len(rows)} rows; they must pair up.")
    if not rows:
        raise ValueError("nothing to evaluate: rows is empty.")
    json_skills = set(json_skills)
    hits: dict[str, list[bool]] = defaultdict(list)
    for pred, row in zip(predictions, rows):
        hits[row.get("skill", "all")].append(match(pred, row["response"], as_json=row.get("skill") in json_skills))
    scores = {k: 100.0 * sum(v) / len(v) for k, v in sorted(hits.items())}
    scores["overall"] = 100.0 * sum(sum(v) for v in hits.values()) / len(rows)
    return scores


def evaluate_exact_match(predictions: Sequence[str], rows: Sequence[Mapping[str, str]],
                         json_skills: Iterable[str] = ("json",)) -> dict[str, float]:
    """Exact match per skill, in percent, plus ``"overall"`` (over all rows).

    ``rows`` carry ``"skill"`` and ``"response"``; answers of the skills in ``json_skills`` are
    compared as JSON."""
    return _score(predictions, rows, exact_match, json_skills)


def evaluate_contains(predictions: Sequence[str], rows: Sequence[Mapping[str, str]],
                      json_skills: Iterable[str] = ("json",)) -> dict[str, float]:
    """``contains_answer`` per skill, in percent, plus ``"overall"``: the lenient twin of
    ``evaluate_exact_match``."""
    return _score(predictions, rows, contains_answer, json_skills)
