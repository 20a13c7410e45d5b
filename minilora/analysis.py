r"""What an adapter learned: the LoRA paper's section 7 measures.  (Chapter 09)

Notation of the paper (Hu et al. 2021): :math:`\Delta W = BA` with :math:`B \in \mathbb{R}^{d \times r}`
and :math:`A \in \mathbb{R}^{r \times k}`: A reads the k input features, B writes the d outputs.

**Subspace similarity** (section 7.2). Take the singular value decomposition :math:`A = U \Sigma V^T`.
The directions of the *input* space that A reads are the rows of :math:`V^T`, A's **right**-singular
vectors, in :math:`\mathbb{R}^k`. Adapters of different ranks (or seeds) all live in that same space,
so those are the vectors to compare: with :math:`V_1^{(i)}` the top-i right-singular vectors of
:math:`A_1` and :math:`V_2^{(j)}` the top-j of :math:`A_2`,

.. math:: \phi(A_1, A_2, i, j) = \frac{\| V_1^{(i)T} V_2^{(j)} \|_F^2}{\min(i, j)} \in [0, 1],

1 when one subspace contains the other, 0 when they are orthogonal. (The paper calls these matrices
:math:`U_{A}` and "right-singular unitary matrices"; we take the right-singular vectors, because the
left ones of A live in :math:`\mathbb{R}^r` and cannot be compared between ranks.) Two random
subspaces of :math:`\mathbb{R}^k` give :math:`E[\phi] = \max(i, j) / k`: the baseline to beat.

**Amplification factor** (section 7.3). With :math:`\Delta W = U \Sigma V^T` and :math:`U_r`,
:math:`V_r` its top-r singular vectors, how strongly does :math:`\Delta W` act along directions that
:math:`W` itself barely uses?

.. math:: \text{amplification} = \frac{\|\Delta W\|_F}{\|U_r^T W V_r\|_F}.

The paper measures about 21.5 for :math:`W_q` of GPT-3's layer 48 at r = 4 and about 2 at r = 64:
a low-rank update amplifies directions that were already in W but not emphasised.
"""
from __future__ import annotations

import torch

from .utils import check_int

__all__ = ["top_right_singular_vectors", "subspace_similarity", "subspace_similarity_grid",
           "random_subspace_similarity", "amplification_factor"]


def _matrix(name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, in float64, if it is a 2-D tensor."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a 2-D torch.Tensor (a LoRA A is (r, in)), got {type(t).__name__}.")
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor (a LoRA A is (r, in)), got shape {tuple(t.shape)}.")
    return t.detach().double()


def top_right_singular_vectors(A: torch.Tensor, i: int) -> torch.Tensor:
    """The top-``i`` right-singular vectors of ``A`` (r, k), as the columns of a (k, i) matrix."""
    A = _matrix("A", A)
    check_int(i, "i")
    if i > min(A.shape):
        raise ValueError(f"i must be between 1 and the rank bound min{tuple(A.shape)} = {min(A.shape)}, got {i}.")
    return torch.linalg.svd(A, full_matrices=False).Vh[:i].T


def subspace_similarity(A1: torch.Tensor, A2: torch.Tensor, i: int, j: int) -> float:
    """:math:`\\phi(A_1, A_2, i, j)`: how much of the top-i input subspace of ``A1`` and the top-j of ``A2``
    overlap, from 0 (orthogonal) to 1 (one inside the other)."""
    if _matrix("A1", A1).shape[1] != _matrix("A2", A2).shape[1]:
        raise ValueError(f"A1 and A2 must read the same input size: {A1.shape[1]} != {A2.shape[1]}.")
    V1, V2 = top_right_singular_vectors(A1, i), top_right_singular_vectors(A2, j)
    return float((V1.T @ V2).square().sum() / min(i, j))


def subspace_similarity_grid(A1: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
    """:math:`\\phi(A_1, A_2, i, j)` for every i up to rank(A1) and j up to rank(A2): the paper's Figure 3
    heatmap, as an (r1, r2) tensor (row i-1, column j-1)."""
    r1, r2 = min(_matrix("A1", A1).shape), min(_matrix("A2", A2).shape)
    V1, V2 = top_right_singular_vectors(A1, r1), top_right_singular_vectors(A2, r2)
    overlap = (V1.T @ V2).square()  # (r1, r2): squared cosines between single directions
    cumulative = overlap.cumsum(0).cumsum(1)  # [i-1, j-1] = ||V1[:, :i]^T V2[:, :j]||_F^2
    sizes = torch.minimum(torch.arange(1, r1 + 1)[:, None], torch.arange(1, r2 + 1)[None, :])
    return cumulative / sizes


def random_subspace_similarity(k: int, i: int, j: int) -> float:
    """The expected :math:`\\phi` of a random i-dimensional and a random j-dimensional subspace of
    :math:`\\mathbb{R}^k`: :math:`\\max(i, j) / k`."""
    for name, value in (("k", k), ("i", i), ("j", j)):
        check_int(value, name)
    if not (i <= k and j <= k):
        raise ValueError(f"need 1 <= i, j <= k, got k={k}, i={i}, j={j}.")
    return max(i, j) / k


def amplification_factor(delta_w: torch.Tensor, W: torch.Tensor, r: int) -> float:
    """:math:`\\|\\Delta W\\|_F / \\|U_r^T W V_r\\|_F`, with :math:`U_r, V_r` the top-``r`` left and right
    singular vectors of ``delta_w`` (out, in); ``W`` is the pretrained weight, of the same shape."""
    delta_w, W = _matrix("delta_w", delta_w), _matrix("W", W)
    if delta_w.shape != W.shape:
        raise ValueError(f"delta_w {tuple(delta_w.shape)} and W {tuple(W.shape)} must have the same shape.")
    check_int(r, "r")
    if r > min(W.shape):
        raise ValueError(f"r must be between 1 and {min(W.shape)}, got {r}.")
    U, _, Vh = torch.linalg.svd(delta_w, full_matrices=False)
    projected = U[:, :r].T @ W @ Vh[:r].T  # (r, r): W seen through delta W's top directions
    return float(torch.linalg.matrix_norm(delta_w) / torch.linalg.matrix_norm(projected))
