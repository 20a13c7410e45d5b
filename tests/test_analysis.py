"""minilora.analysis: subspace similarity and amplification factor on matrices whose answer is known."""
import pytest
import torch

from minilora.analysis import (
    amplification_factor,
    random_subspace_similarity,
    subspace_similarity,
    subspace_similarity_grid,
    top_right_singular_vectors,
)


def rand(r, k, seed):
    return torch.randn(r, k, generator=torch.Generator().manual_seed(seed))


def test_an_adapter_against_itself_its_rescaling_and_a_bigger_one_containing_it():
    A = rand(4, 32, 0)
    assert subspace_similarity(A, A, 2, 4) == pytest.approx(1.0)
    assert subspace_similarity(A, -3.0 * A, 4, 4) == pytest.approx(1.0)  # signs and scale do not matter
    bigger = torch.cat([A, rand(4, 32, 1)])  # rank 8, reads every direction A reads
    assert subspace_similarity(A, bigger, 4, 8) == pytest.approx(1.0)
    assert subspace_similarity(A, bigger, 4, 1) < 1.0  # but its top direction alone is not A's


def test_orthogonal_input_subspaces_give_zero():
    A1 = torch.cat([rand(4, 4, 0), torch.zeros(4, 12)], dim=1)  # reads features 0-3 only
    A2 = torch.cat([torch.zeros(4, 4), rand(4, 4, 1), torch.zeros(4, 8)], dim=1)  # features 4-7
    assert subspace_similarity(A1, A2, 4, 4) == pytest.approx(0.0, abs=1e-12)


def test_the_right_singular_vectors_are_the_input_directions():
    A = torch.zeros(2, 5)
    A[0, 3], A[1, 1] = 5.0, 2.0  # reads feature 3 strongly, feature 1 weakly
    V = top_right_singular_vectors(A, 2)
    assert V.shape == (5, 2)
    torch.testing.assert_close(V.abs(), torch.eye(5, dtype=torch.float64)[:, [3, 1]])


def test_random_subspaces_overlap_as_the_baseline_says():
    k, i = 64, 4
    phis = [subspace_similarity(rand(i, k, 2 * s), rand(i, k, 2 * s + 1), i, i) for s in range(300)]
    expected = random_subspace_similarity(k, i, i)
    assert expected == i / k
    assert sum(phis) / len(phis) == pytest.approx(expected, rel=0.1)  # 300 seeded pairs; their spread is ~3%


def test_the_grid_is_phi_at_every_i_and_j():
    A1, A2 = rand(8, 40, 3), rand(6, 40, 4)
    grid = subspace_similarity_grid(A1, A2)
    assert grid.shape == (8, 6)
    for i in (1, 3, 8):
        for j in (1, 4, 6):
            assert grid[i - 1, j - 1].item() == pytest.approx(subspace_similarity(A1, A2, i, j))
    assert torch.all((grid >= -1e-12) & (grid <= 1 + 1e-12))


def test_amplification_is_large_along_directions_w_barely_uses():
    W = torch.diag(torch.tensor([10.0, 1.0, 0.1]))
    e = torch.eye(3)
    weak = 2.0 * torch.outer(e[2], e[2])  # a rank-1 update along W's weakest direction
    strong = 2.0 * torch.outer(e[0], e[0])
    assert amplification_factor(weak, W, 1) == pytest.approx(2.0 / 0.1)
    assert amplification_factor(strong, W, 1) == pytest.approx(2.0 / 10.0)


@pytest.mark.parametrize("call, fragment", [
    (lambda: subspace_similarity(torch.zeros(3), torch.zeros(2, 3), 1, 1), "must be a 2-D tensor"),
    (lambda: subspace_similarity(rand(2, 5, 0), rand(2, 6, 1), 1, 1), "same input size: 5 != 6"),
    (lambda: subspace_similarity(rand(2, 5, 0), rand(2, 5, 1), 3, 1), "between 1 and the rank bound"),
    (lambda: random_subspace_similarity(4, 5, 1), "need 1 <= i, j <= k"),
    (lambda: amplification_factor(rand(3, 4, 0), rand(4, 3, 1), 1), "must have the same shape"),
    (lambda: amplification_factor(rand(3, 4, 0), rand(3, 4, 1), 4), "r must be between 1 and 3"),
])
def test_bad_input_is_refused(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call()


@pytest.mark.parametrize("call, fragment", [
    (lambda: subspace_similarity([[1.0]], torch.zeros(2, 3), 1, 1), "A1 must be a 2-D torch.Tensor"),
    (lambda: subspace_similarity(rand(2, 5, 0), rand(2, 5, 1), 1.0, 1), r"i must be an integer >= 1, got 1.0"),
    (lambda: random_subspace_similarity(4, True, 1), r"i must be an integer >= 1, got True \(bool\)"),
    (lambda: amplification_factor(rand(3, 4, 0), rand(3, 4, 1), "2"), "r must be an integer"),
])
def test_wrong_types_are_type_errors(call, fragment):
    with pytest.raises(TypeError, match=fragment):
        call()
