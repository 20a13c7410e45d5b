"""minilora.course.timing: interleaved rounds and the bytes an operation allocates (chapter 13)."""
import pytest
import torch

from minilora.course.timing import allocated_bytes, interleaved


def test_interleaved_rotates_the_order_and_gives_per_round_ratios():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    timings = interleaved(fns, rounds=3, warmup=0)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(t.seconds) == 3 and len(t.ratios) == 3 for t in timings.values())
    assert timings["a"].ratios == [1.0, 1.0, 1.0]  # the reference, by default the first
    for t in timings.values():
        assert t.ratios == [s / r for s, r in zip(t.seconds, timings["a"].seconds)]


def test_interleaved_refuses_bad_input():
    with pytest.raises(ValueError, match="reference"):
        interleaved({"a": lambda: None}, rounds=2, reference="b")
    with pytest.raises(ValueError, match="rounds"):
        interleaved({"a": lambda: None}, rounds=0)


def test_allocated_bytes_counts_new_tensors_not_views_or_in_place_results():
    x = torch.randn(64, 32)
    assert allocated_bytes(lambda: x @ x.T) == 64 * 64 * 4
    assert allocated_bytes(lambda: x.view(32, 64)) == 0
    assert allocated_bytes(lambda: x.mul_(1.0)) == 0
    A = torch.randn(4, 8, 32)
    idx = torch.tensor([0, 1, 1, 3, 2])
    assert allocated_bytes(lambda: A[idx]) == 5 * 8 * 32 * 4  # BGMV's gather: one copy per index
