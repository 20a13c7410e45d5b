"""Preference tuning: a sequence's log-probability and the DPO loss.  (Chapter 15)

**Sequence log-probabilities.** A causal language model's ``logits`` at position t predict token t + 1, so
the log-probability of the labelled tokens of row b is

    log π(y | x) = Σ_t  mask[b, t+1] · log softmax(logits[b, t])[labels[b, t+1]],

where ``mask`` is ``labels != -100`` (the prompt and the padding are labelled -100, as for training).
``get_batch_logps`` returns it per row, or its mean over the labelled tokens (``average_log_prob=True``).

**DPO** (Rafailov et al., 2023). A reward model of the Bradley–Terry kind says that answer y_w is preferred to
y_l with probability σ(r(x, y_w) − r(x, y_l)). The policy that maximises E[r] − β·KL(π ‖ π_ref) is
π*(y | x) ∝ π_ref(y | x)·exp(r(x, y)/β), so r(x, y) = β·log(π*(y | x)/π_ref(y | x)) + β·log Z(x), and Z(x)
cancels in the difference. Fitting that implied reward to the preferences by maximum likelihood is

    loss = −log σ(β·[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]),

which needs no reward model and no sampling. ``dpo_loss`` returns it per pair, with the implied rewards
β·(log π(y) − log π_ref(y)) of the chosen and rejected answers, as the DPO paper's reference implementation
(``preference_loss``) does. ``label_smoothing`` ε assumes each preference is flipped with probability ε
(conservative DPO): −(1−ε)·log σ(βh) − ε·log σ(−βh). ``ipo=True`` gives IPO (Azar et al., 2023, Eq. 17):
(h − 1/(2β))². With LoRA the reference needs no second model: it is the same model with the adapter switched
off (``minilora.disable_adapter``), which is what TRL's ``DPOTrainer`` does when given a ``peft_config``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .instruct import IGNORE_INDEX
from .utils import check_bool, check_number

__all__ = ["get_batch_logps", "dpo_loss"]


def get_batch_logps(logits: torch.Tensor, labels: torch.Tensor, average_log_prob: bool = False) -> torch.Tensor:
    """The log-probability of each row's labelled tokens, shape (batch,).

    Args:
        logits: (batch, seq, vocab), the model's output for ``input_ids``.
        labels: (batch, seq), ``input_ids`` with the positions not to score (prompt, padding) set to -100; they
            are shifted by one inside, as the model's own loss does.
        average_log_prob: the mean per labelled token instead of the sum (the sum is DPO's log π(y | x)).
    """
    check_bool(average_log_prob, "average_log_prob")
    if not (isinstance(logits, torch.Tensor) and isinstance(labels, torch.Tensor)):
        raise TypeError("logits and labels must be tensors: model(**batch).logits and batch['labels'].")
    if logits.ndim != 3 or logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be (batch, seq, vocab) and labels {tuple(labels.shape)} "
                         "(batch, seq), the same batch and sequence length.")
    labels = labels[:, 1:]  # (batch, seq-1): the token each position predicts
    mask = labels != IGNORE_INDEX
    if average_log_prob and not mask.any(-1).all():
        empty = (~mask.any(-1)).nonzero().flatten().tolist()
        raise ValueError(f"rows {empty} have no labelled token after the first, so their mean log-probability is "
                         "undefined; check that the answer is not masked as prompt, or use the sum.")
    if (labels[mask] < 0).any() or (labels[mask] >= logits.shape[-1]).any():
        raise ValueError(f"labels must be token ids in [0, {logits.shape[-1]}) or -100 (not scored).")
    logits = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 logits: in fp32
    per_token = torch.gather(logits.log_softmax(-1), 2,
                             labels.masked_fill(~mask, 0).unsqueeze(2)).squeeze(2)  # (batch, seq-1)
    total = (per_token * mask).sum(-1)
    return total / mask.sum(-1) if average_log_prob else total


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0, ipo: bool = False,
             reference_free: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(losses, chosen_rewards, rejected_rewards), each of shape (pairs,); the training loss is ``losses.mean()``.

    Args:
        policy_chosen_logps, policy_rejected_logps: log π(y_w | x), log π(y_l | x) from ``get_batch_logps``.
        reference_chosen_logps, reference_rejected_logps: the same under the reference model (with LoRA: the
            adapter switched off), computed without gradients.
        beta: β, the strength of the KL constraint (DPO paper, Eq. 7); smaller lets the policy move further.
        label_smoothing: ε in [0, 0.5), the assumed share of flipped preferences (conservative DPO).
        ipo: the IPO loss (h − 1/(2β))² instead (no label smoothing).
        reference_free: take log π_ref as uniform (the reference log-ratio is 0).

    The rewards are β·(log π − log π_ref), detached, whatever ``reference_free`` says.
    """
    tensors = (policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError("the four log-probabilities must be tensors, one value per pair (get_batch_logps).")
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError("the four log-probabilities must have the same shape (pairs,); "
                         f"got {[tuple(t.shape) for t in tensors]}.")
    check_number(beta, "beta", low=0, low_open=True)
    check_number(label_smoothing, "label_smoothing", low=0, high=0.5, high_open=True)
    check_bool(ipo, "ipo")
    check_bool(reference_free, "reference_free")
    if ipo and label_smoothing:
        raise ValueError("IPO has no label smoothing: pass ipo=True with label_smoothing=0, or DPO with smoothing.")
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = 0 if reference_free else reference_chosen_logps - reference_rejected_logps
    h = pi_logratios - ref_logratios  # how much more the policy prefers y_w than the reference does
    if ipo:
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards
