"""Chapter 07 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import pytest
import torch
import torch.nn.functional as F
from checker_protocol import assert_specific_hint, protocol_tests

from minilora.course.exercises import ch07
from minilora.instruct import left_pad


# Exercise 7.1 --------------------------------------------------------------------------------------
def response_labels(input_ids, n_prompt):
    return [-100] * n_prompt + list(input_ids[n_prompt:])


LABELS_WRONG = {
    "no mask": lambda ids, n: list(ids),
    "zero instead of -100": lambda ids, n: [0] * n + ids[n:],
    "the wrong way round": lambda ids, n: ids[:n] + [-100] * (len(ids) - n),
    "one too many": lambda ids, n: [-100] * (n + 1) + ids[n + 1:],
    "one too few": lambda ids, n: [-100] * max(n - 1, 0) + ids[max(n - 1, 0):],
    "end of turn masked": lambda ids, n: [-100] * n + ids[n:-1] + [-100],
    "shifted by hand": lambda ids, n: response_labels(ids, n)[1:] + [-100],
    "a string": lambda ids, n: str(response_labels(ids, n)),
}


# Exercise 7.2 --------------------------------------------------------------------------------------
def left_pad_batch(sequences, pad_id):
    width = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_id] * (width - len(s)) + list(s) for s in sequences])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    return ids, mask


def _right_pad(sequences, pad_id):
    width = max(len(s) for s in sequences)
    return (torch.tensor([list(s) + [pad_id] * (width - len(s)) for s in sequences]),
            torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]))


LEFT_PAD_WRONG = {
    "right padding": _right_pad,
    "inverted mask": lambda s, p: (left_pad_batch(s, p)[0], 1 - left_pad_batch(s, p)[1]),
    "pads with zero": lambda s, p: left_pad_batch(s, 0),
    "ids only": lambda s, p: left_pad_batch(s, p)[0],
    "float mask": lambda s, p: (left_pad_batch(s, p)[0], left_pad_batch(s, p)[1].float()),
    "no padding": lambda s, p: (torch.tensor(s[0]), torch.ones(len(s[0]))),
}


# Exercise 7.3 --------------------------------------------------------------------------------------
def response_loss(logits, labels):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)


def _per_sequence(logits, labels):
    losses = [response_loss(logits[i:i + 1], labels[i:i + 1]) for i in range(len(logits))]
    return torch.stack(losses).mean()


def _summed(logits, labels):
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100,
                           reduction="sum")


LOSS_WRONG = {
    "not shifted": lambda lo, la: F.cross_entropy(lo.reshape(-1, lo.shape[-1]), la.reshape(-1), ignore_index=-100),
    "mean of sequence means": _per_sequence,
    "sum": _summed,
    "-100 read as token 0": lambda lo, la: response_loss(lo, la.clamp(min=0)),
    "a float": lambda lo, la: float(response_loss(lo, la)),
    "one loss per token": lambda lo, la: F.cross_entropy(lo[:, :-1].reshape(-1, lo.shape[-1]), la[:, 1:].reshape(-1),
                                                         ignore_index=-100, reduction="none"),
}

CASES = [
    (ch07.check_response_labels, response_labels, LABELS_WRONG),
    (ch07.check_left_pad_batch, left_pad_batch, LEFT_PAD_WRONG),
    (ch07.check_response_loss, response_loss, LOSS_WRONG),
]


test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES, hint_required=True)


@pytest.mark.parametrize("wrong,fragment", [
    (LABELS_WRONG["shifted by hand"], "do not shift"),
    (LABELS_WRONG["end of turn masked"], "stop"),
    (LEFT_PAD_WRONG["right padding"], "LEFT"),
    (LOSS_WRONG["not shifted"], "shift by one"),
    (LOSS_WRONG["mean of sequence means"], "mean over sequences"),
    (LOSS_WRONG["-100 read as token 0"], "ignore_index"),
])
def test_hints_are_specific(wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, cases=CASES)


def test_the_library_left_pad_passes():
    assert ch07.check_left_pad_batch(left_pad) is True
