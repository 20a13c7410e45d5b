"""Chapter 15 checkers: a stub is 'not attempted', each typical mistake fails with its hint, the solution passes."""
import pytest
import torch
import torch.nn.functional as F
from checker_protocol import assert_specific_hint, protocol_tests

from minilora.course.exercises import ch15


# Exercise 15.1 --------------------------------------------------------------------------------------
def dpo_by_hand(pc, pr, rc, rr, beta):
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr)))


DPO_WRONG = {
    "sign": lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * ((pr - rr) - (pc - rc))),
    "no reference": lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr)),
    "no beta": lambda pc, pr, rc, rr, beta: -F.logsigmoid((pc - rc) - (pr - rr)),
    "no log": lambda pc, pr, rc, rr, beta: 1 - torch.sigmoid(beta * ((pc - rc) - (pr - rr))),
    "a mean": lambda *args: dpo_by_hand(*args).mean(),
    "a list": lambda *args: dpo_by_hand(*args).tolist(),
}


# Exercise 15.2 --------------------------------------------------------------------------------------
def sequence_logps(logits, labels):
    labels = labels[:, 1:]
    mask = labels != -100
    logp = logits[:, :-1].log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def unshifted(logits, labels):
    mask = labels != -100
    return (logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask).sum(-1)


def unmasked(logits, labels):
    return logits[:, :-1].log_softmax(-1).gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1).sum(-1)


def averaged(logits, labels):
    mask = labels[:, 1:] != -100
    return sequence_logps(logits, labels) / mask.sum(-1)


def raw_logits(logits, labels):
    labels = labels[:, 1:]
    mask = labels != -100
    return (logits[:, :-1].gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).abs() * mask).sum(-1)


LOGPS_WRONG = {"unshifted": unshifted, "unmasked": unmasked, "averaged": averaged, "raw logits": raw_logits}


# Exercise 15.3 --------------------------------------------------------------------------------------
def group_advantage(rewards, group_size):
    groups = rewards.view(-1, group_size)
    return (groups - groups.mean(1, keepdim=True)).flatten()


ADVANTAGE_WRONG = {
    "batch mean": lambda r, g: r - r.mean(),
    "column-major": lambda r, g: (r.view(g, -1) - r.view(g, -1).mean(0)).flatten(),
    "scaled": lambda r, g: ((r.view(-1, g) - r.view(-1, g).mean(1, keepdim=True))
                            / (r.view(-1, g).std(1, keepdim=True) + 1e-6)).flatten(),
}

CASES = [
    (ch15.check_dpo_by_hand, dpo_by_hand, DPO_WRONG),
    (ch15.check_sequence_logps, sequence_logps, LOGPS_WRONG),
    (ch15.check_group_advantage, group_advantage, ADVANTAGE_WRONG),
]
test_stub_is_not_attempted, test_solution_passes, test_wrong_answer_fails_with_a_hint = \
    protocol_tests(CASES, hint_required=True)


@pytest.mark.parametrize("wrong,fragment", [
    (DPO_WRONG["sign"], "it must fall"),
    (DPO_WRONG["no reference"], "the reference is missing"),
    (DPO_WRONG["no beta"], "β is missing"),
    (DPO_WRONG["no log"], "take the logarithm"),
    (DPO_WRONG["a mean"], "not what is asked"),
    (DPO_WRONG["a list"], "return a tensor"),
    (LOGPS_WRONG["unshifted"], "shift by one"),
    (LOGPS_WRONG["unmasked"], "leave out the labels of −100"),
    (LOGPS_WRONG["averaged"], "do not average"),
    (LOGPS_WRONG["raw logits"], "never positive"),
    (ADVANTAGE_WRONG["batch mean"], "each prompt's own group"),
    (ADVANTAGE_WRONG["column-major"], "prompt-major"),
    (ADVANTAGE_WRONG["scaled"], "GRPO's scaling"),
])
def test_hints_are_specific(wrong, fragment, capsys):
    assert_specific_hint(wrong, fragment, capsys, cases=CASES)


def test_the_two_pair_example_is_the_notebooks():
    pc, pr, rc, rr = ch15.TWO_PAIRS  # pair 1: the policy moved toward the chosen answer; pair 2: away from it
    margins = 0.1 * ((pc - rc) - (pr - rr))
    assert margins[0] > 0 > margins[1]
