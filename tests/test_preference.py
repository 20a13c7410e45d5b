"""minilora.preference against the DPO paper's reference implementation's formulas, written out here."""
import pytest
import torch
import torch.nn.functional as F

from minilora.preference import dpo_loss, get_batch_logps


def reference_batch_logps(logits, labels, average_log_prob=False):
    """_get_batch_logps of eric-mitchell/direct-preference-optimization (trainers.py), as published."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = labels != -100
    labels[labels == -100] = 0
    per_token_logps = torch.gather(logits.log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)
    if average_log_prob:
        return (per_token_logps * loss_mask).sum(-1) / loss_mask.sum(-1)
    return (per_token_logps * loss_mask).sum(-1)


def reference_preference_loss(pc, pr, rc, rr, beta, label_smoothing=0.0, ipo=False, reference_free=False):
    """preference_loss of the same file."""
    pi_logratios = pc - pr
    ref_logratios = rc - rr
    if reference_free:
        ref_logratios = 0
    logits = pi_logratios - ref_logratios
    if ipo:
        losses = (logits - 1 / (2 * beta)) ** 2
    else:
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    return losses, beta * (pc - rc).detach(), beta * (pr - rr).detach()


def batch(seed=0, b=3, t=7, v=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g, dtype=torch.float64)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :2] = -100  # a prompt
    labels[-1, 5:] = -100  # padding
    return logits, labels


@pytest.mark.parametrize("average", [False, True])
def test_get_batch_logps_is_the_reference(average):
    logits, labels = batch()
    assert torch.allclose(get_batch_logps(logits, labels, average), reference_batch_logps(logits, labels, average))


def test_get_batch_logps_is_the_models_own_loss_for_one_row():
    logits, labels = batch(b=1)
    n = int((labels[:, 1:] != -100).sum())
    want = -F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum")
    assert get_batch_logps(logits, labels) == pytest.approx(float(want))
    assert get_batch_logps(logits, labels, True) == pytest.approx(float(want) / n)


def test_get_batch_logps_refusals():
    logits, labels = batch()
    with pytest.raises(ValueError, match=r"logits \(3, 7, 11\) must be \(batch, seq, vocab\) and labels \(3, 6\)"):
        get_batch_logps(logits, labels[:, :6])
    empty = labels.clone()
    empty[2] = -100
    with pytest.raises(ValueError, match=r"rows \[2\] have no labelled token"):
        get_batch_logps(logits, empty, average_log_prob=True)
    assert get_batch_logps(logits, empty)[2] == 0  # the sum of nothing
    with pytest.raises(ValueError, match=r"token ids in \[0, 11\)"):
        get_batch_logps(logits, labels + 20)
    with pytest.raises(TypeError, match="average_log_prob"):
        get_batch_logps(logits, labels, average_log_prob=1)


@pytest.mark.parametrize("kw", [{}, {"beta": 0.5}, {"label_smoothing": 0.2}, {"ipo": True},
                                {"reference_free": True}, {"beta": 0.05, "label_smoothing": 0.1}])
def test_dpo_loss_is_the_reference(kw):
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(5, generator=g, dtype=torch.float64) * 10 for _ in range(4))
    pc.requires_grad_(True)
    got, want = dpo_loss(pc, pr, rc, rr, **kw), reference_preference_loss(pc, pr, rc, rr, **{"beta": 0.1, **kw})
    for a, b in zip(got, want):
        assert torch.allclose(a, b)
    assert not got[1].requires_grad and got[0].requires_grad


def test_dpo_loss_by_hand():
    # the policy prefers y_w by 2 nats more than the reference does: loss = -log sigmoid(0.1 * 2) = log(1 + e^-0.2)
    losses, chosen, rejected = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]),
                                        torch.tensor([-11.0]))
    assert losses.item() == pytest.approx(torch.log1p(torch.exp(torch.tensor(-0.2))).item())
    assert chosen.item() == pytest.approx(0.1) and rejected.item() == pytest.approx(-0.1)
    at_start = dpo_loss(*[torch.tensor([-3.0])] * 4)[0]  # policy == reference: log 2
    assert at_start.item() == pytest.approx(0.6931471805599453)


def test_dpo_loss_refusals():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match=r"same shape \(pairs,\)"):
        dpo_loss(x, x, x, torch.zeros(4))
    with pytest.raises(ValueError, match="beta must be a number > 0"):
        dpo_loss(x, x, x, x, beta=0)
    with pytest.raises(ValueError, match=r"label_smoothing must be a number in \[0, 0.5\)"):
        dpo_loss(x, x, x, x, label_smoothing=0.5)
    with pytest.raises(ValueError, match="IPO has no label smoothing"):
        dpo_loss(x, x, x, x, ipo=True, label_smoothing=0.1)
    with pytest.raises(TypeError, match="must be tensors"):
        dpo_loss([0.0], x, x, x)


def test_the_reference_is_the_adapter_switched_off(tiny):
    import copy

    import minilora

    base = tiny.llama()
    frozen = copy.deepcopy(base)
    model = tiny.as_if_trained(minilora.inject_lora(base, minilora.LoRAConfig(r=4, target_modules="all-linear")))
    ids = tiny.IDS.repeat(2, 1)
    labels = ids.clone()
    labels[:, :3] = -100
    with torch.no_grad():
        policy = get_batch_logps(model(input_ids=ids).logits, labels)
        with minilora.disable_adapter(model):
            reference = get_batch_logps(model(input_ids=ids).logits, labels)
        want = get_batch_logps(frozen(input_ids=ids).logits, labels)
    assert torch.allclose(reference, want, atol=1e-6) and not torch.allclose(policy, want, atol=1e-3)
    assert torch.allclose(get_batch_logps(model(input_ids=ids).logits, labels), policy)  # switched back on after
