"""minilora.merging against peft.utils.merge_utils on random tensors, DARE's statistics, TIES by hand,
and every bad input refused with a clear error."""
import pytest
import torch
from peft.utils import merge_utils as peft_merge

from minilora import merging


def tasks(n=3, shape=(6, 10), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


WEIGHTS = [torch.tensor([0.5, 0.3, 0.2]), torch.tensor([1.0, -0.7, 0.4])]


@pytest.mark.filterwarnings("ignore:The density 1.0 is greater")  # PEFT's warning for density 1
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_deterministic_merges_equal_peft(weights, density):
    ts = tasks()
    torch.testing.assert_close(merging.task_arithmetic(ts, weights), peft_merge.task_arithmetic(ts, weights))
    torch.testing.assert_close(merging.magnitude_prune(ts, weights, density),
                               peft_merge.magnitude_prune(ts, weights, density))
    for method in ("total", "frequency"):
        torch.testing.assert_close(merging.ties(ts, weights, density, method),
                                   peft_merge.ties(ts, weights, density, method))


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_dare_equals_peft_with_the_same_seed(weights, density):
    ts = tasks()
    for ours, theirs, extra in [(merging.dare_linear, peft_merge.dare_linear, ()),
                                (merging.dare_ties, peft_merge.dare_ties, ("total",)),
                                (merging.dare_ties, peft_merge.dare_ties, ("frequency",))]:
        torch.manual_seed(11)
        a = ours(ts, weights, density, *extra)
        torch.manual_seed(11)
        torch.testing.assert_close(a, theirs(ts, weights, density, *extra), atol=0, rtol=0)


def test_building_blocks_equal_peft():
    ts = tasks()
    stacked = torch.stack(ts)
    for method in ("total", "frequency"):
        ours = merging.calculate_majority_sign_mask(stacked, method)
        assert torch.equal(ours, peft_merge.calculate_majority_sign_mask(stacked, method))
        torch.testing.assert_close(merging.disjoint_merge(stacked, ours), peft_merge.disjoint_merge(stacked, ours))
    torch.testing.assert_close(merging.prune(ts[0], 0.3, "magnitude"), peft_merge.prune(ts[0], 0.3, "magnitude"))
    for rescale in (False, True):
        torch.manual_seed(5)
        a = merging.prune(ts[0], 0.3, "random", rescale=rescale)
        torch.manual_seed(5)
        assert torch.equal(a, peft_merge.prune(ts[0], 0.3, "random", rescale=rescale))
    w = torch.tensor([1.0, 2.0, 3.0])
    assert merging.reshape_weight_task_tensors(stacked, w).shape == (3, 1, 1)


def test_magnitude_pruning_keeps_the_largest_entries():
    t = torch.tensor([[0.1, -5.0, 0.3], [2.0, -0.2, 0.0], [-1.0, 0.05, 4.0]])
    kept = merging.magnitude_based_pruning(t, 3 / 9)
    assert torch.equal(kept, torch.tensor([[0.0, -5.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 4.0]]))
    assert torch.equal(merging.prune(t, 1.0, "magnitude"), t)  # density 1 keeps everything


def test_ties_by_hand():
    """Trim to the top 2 of 4 entries, elect the sign of the summed trimmed entries, average the agreeing ones."""
    t1 = torch.tensor([3.0, -1.0, 0.5, 2.0])   # trimmed: [3, 0, 0, 2]
    t2 = torch.tensor([-4.0, 2.0, 0.1, 1.0])   # trimmed: [-4, 2, 0, 0]
    t3 = torch.tensor([2.0, -3.0, 0.2, 0.1])   # trimmed: [2, -3, 0, 0]
    # total: sums [1, -1, 0, 2] -> signs [+, -, +, +]; agreeing: [3, 2], [-3], none (0 -> 0), [2]
    got = merging.ties([t1, t2, t3], torch.ones(3), density=0.5, majority_sign_method="total")
    torch.testing.assert_close(got, torch.tensor([2.5, -3.0, 0.0, 2.0]))
    # frequency: votes [+1, 0, 0, +1] -> [+, +, +, +]; entry 1: only t2's +2 agrees
    got = merging.ties([t1, t2, t3], torch.ones(3), density=0.5, majority_sign_method="frequency")
    torch.testing.assert_close(got, torch.tensor([2.5, 2.0, 0.0, 2.0]))


def test_the_sign_is_elected_before_the_weights_apply():
    """As in PEFT: a negative weight flips a task's contribution, not its vote."""
    t1, t2 = torch.tensor([1.0]), torch.tensor([3.0])
    got = merging.ties([t1, t2], torch.tensor([1.0, -1.0]), density=1.0)
    # both vote +; the disjoint mean of the weighted entries is (1 - 3) / 2
    torch.testing.assert_close(got, torch.tensor([-1.0]))


@pytest.mark.parametrize("density", [0.1, 0.5])
def test_dare_keeps_a_density_fraction_rescaled_and_the_expectation(density):
    torch.manual_seed(0)
    t = torch.full((400, 500), 2.0)
    dropped = merging.prune(t, density, "random", rescale=True)
    kept = dropped != 0
    assert abs(kept.float().mean().item() - density) < 0.01  # 200,000 Bernoulli draws: std 0.0011 at most
    assert torch.all(dropped[kept] == 2.0 / density)  # survivors rescaled by 1 / (1 - p)
    assert abs(dropped.mean().item() - 2.0) < 0.05  # the expectation is unchanged
    torch.manual_seed(0)
    assert torch.equal(merging.prune(t, density, "random", rescale=False) != 0, kept)  # same draw, no rescale


@pytest.mark.parametrize("call, fragment", [
    (lambda ts, w: merging.ties(ts, w, 0.0), r"density must be a number in \(0, 1\], got 0.0. It is the fraction of "
                                             "entries to keep"),
    (lambda ts, w: merging.dare_linear(ts, w, 1.5), r"got 1.5"),
    (lambda ts, w: merging.magnitude_prune(ts, w, -0.1), r"got -0.1"),
    (lambda ts, w: merging.prune(ts[0], 0.5, "largest"), "method must be 'magnitude' or 'random'"),
    (lambda ts, w: merging.ties(ts, w, 0.5, "mass"), r"majority_sign_method must be one of \('total', 'frequency'\)"),
    (lambda ts, w: merging.task_arithmetic(ts, w[:2]), "one weight per task tensor: 3 task tensors"),
    (lambda ts, w: merging.task_arithmetic(ts, w[None]), "must be a 1-D tensor"),
    (lambda ts, w: merging.task_arithmetic([], w), "task_tensors is empty"),
    (lambda ts, w: merging.task_arithmetic(ts[:2] + [ts[2][:, :4]], w), "same shape"),
])
def test_bad_input_is_refused(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call(tasks(), WEIGHTS[0])


@pytest.mark.parametrize("density", [True, "0.5", None])
def test_a_density_of_the_wrong_type_is_a_type_error(density):
    with pytest.raises(TypeError, match=f"density must be a number in \\(0, 1\\], got {density!r}"):
        merging.dare_ties(tasks(), WEIGHTS[0], density)
