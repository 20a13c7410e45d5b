"""tools.ladder.choose_rate: the chosen rate lies inside the rates tried."""
import pytest

from tools.ladder import choose_rate

LADDER = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2]


def peaked(at):
    return lambda lr: (-abs(LADDER.index(lr) - LADDER.index(at)),)


@pytest.mark.parametrize("peak, tried", [
    (5e-4, [2e-4, 5e-4, 1e-3]), (1e-4, [1e-4, 2e-4, 5e-4, 1e-3]),
    (2e-3, [2e-4, 5e-4, 1e-3, 2e-3, 5e-3]), (1e-2, [2e-4, 5e-4, 1e-3, 2e-3, 5e-3]),
])
def test_extends_towards_the_peak_at_most_twice(peak, tried):
    best, scores = choose_rate(peaked(peak), [2e-4, 5e-4, 1e-3], LADDER)
    assert sorted(scores) == tried
    assert best == (peak if peak in tried else 5e-3)  # two extensions reach 5e-3, not the peak at 1e-2


def test_ties_go_to_the_smaller_rate_and_bad_starts_are_refused():
    best, scores = choose_rate(lambda lr: (1.0,), [2e-4, 5e-4, 1e-3], LADDER)  # all tie: the smallest, extended
    assert best == 1e-4 and sorted(scores) == [1e-4, 2e-4, 5e-4, 1e-3]
    best, scores = choose_rate(lambda lr: (0.0 if lr == 2e-4 else 1.0,), [2e-4, 5e-4, 1e-3], LADDER)
    assert best == 5e-4 and sorted(scores) == [2e-4, 5e-4, 1e-3]
    with pytest.raises(ValueError, match="ladder"):
        choose_rate(lambda lr: (0,), [3e-4], LADDER)
