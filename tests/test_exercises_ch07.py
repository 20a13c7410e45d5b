"""Chapter 07 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import pytest
import torch
import torch.nn.functional as F

from minilora.exercises import ch07
from minilora.instruct import left_pad


def stub(*args):
    raise NotImplementedError


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


@pytest.mark.parametrize("check, solution, wrong", CASES, ids=["7.1", "7.2", "7.3"])
def test_stub_solution_and_mistakes(check, solution, wrong, capsys):
    assert check(stub) is None
    assert "not attempted" in capsys.readouterr().out
    assert check(solution) is True
    for name, fn in wrong.items():
        assert check(fn) is False, name
        out = capsys.readouterr().out
        assert "not yet" in out or "raised" in out, name


def test_specific_hints(capsys):
    ch07.check_response_labels(LABELS_WRONG["shifted by hand"])
    assert "do not shift" in capsys.readouterr().out
    ch07.check_response_labels(LABELS_WRONG["end of turn masked"])
    assert "stop" in capsys.readouterr().out
    ch07.check_left_pad_batch(_right_pad)
    assert "LEFT" in capsys.readouterr().out
    ch07.check_response_loss(LOSS_WRONG["not shifted"])
    assert "shift by one" in capsys.readouterr().out
    ch07.check_response_loss(_per_sequence)
    assert "mean over sequences" in capsys.readouterr().out
    ch07.check_response_loss(LOSS_WRONG["-100 read as token 0"])
    assert "ignore_index" in capsys.readouterr().out


def test_the_library_left_pad_passes():
    assert ch07.check_left_pad_batch(left_pad) is True
