"""minilora.train: fit / evaluate on a learnable toy problem, plain modules and transformers models."""
import math
import re

import pytest
import snapshot
import torch
from sklearn.datasets import load_digits
from torch import nn

from minilora.config import LoRAConfig
from minilora.inject import inject_lora
from minilora.layers import LoRALinear
from minilora.train import History, evaluate, fit, train_step


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    return X[:1200], y[:1200], X[1200:], y[1200:]


def batches(X, y, size):
    return [(X[i:i + size], y[i:i + size]) for i in range(0, len(X), size)]


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_loss_decreases_and_accuracy_is_learned(digits):
    Xtr, ytr, Xte, yte = digits
    model = mlp()
    before = evaluate(model, batches(Xte, yte, 256))
    hist = fit(model, batches(Xtr, ytr, 64), epochs=5, lr=1e-2, val_loader=batches(Xte, yte, 256),
               progress=False)
    after = evaluate(model, batches(Xte, yte, 256))
    assert before["accuracy"] < 0.3
    assert after["accuracy"] > 0.85
    assert after["loss"] < 0.5 * before["loss"]
    first, last = sum(hist.train_loss[:5]) / 5, sum(hist.train_loss[-5:]) / 5
    assert last < 0.3 * first
    assert hist.val_accuracy[-1] == pytest.approx(after["accuracy"])


def test_history_lengths():
    X, y = torch.randn(100, 64), torch.randint(0, 10, (100,))
    train = batches(X, y, 10)  # 10 batches per epoch
    h = fit(mlp(), train, epochs=3, val_loader=train[:2], eval_every=4, progress=False)
    assert isinstance(h, History)
    assert h.steps == len(h.train_loss) == len(h.step_time) == len(h.lr) == 30
    assert h.val_step == [4, 8, 12, 16, 20, 24, 28, 30]  # every 4 steps, and after the last
    assert len(h.val_loss) == len(h.val_accuracy) == 8
    assert h.epoch_end_step == [10, 20, 30]
    assert h.total_time > 0 and all(t >= 0 for t in h.step_time)
    assert h.n_trainable == sum(p.numel() for p in mlp().parameters())
    # default: validate at the end of every epoch
    h = fit(mlp(), train, epochs=2, val_loader=train[:2], progress=False)
    assert h.val_step == [10, 20]


def test_max_steps_and_grad_accumulation():
    X, y = torch.randn(100, 64), torch.randint(0, 10, (100,))
    h = fit(mlp(), batches(X, y, 10), epochs=5, max_steps=7, progress=False)
    assert h.steps == 7
    h = fit(mlp(), batches(X, y, 10), epochs=2, grad_accum_steps=3, progress=False)
    assert h.steps == 8  # ceil(10 / 3) = 4 steps per epoch


def test_grad_accumulation_equals_big_batch():
    X, y = torch.randn(40, 64), torch.randint(0, 10, (40,))
    m1, m2 = mlp(), mlp()
    opt1 = torch.optim.SGD(m1.parameters(), lr=0.1)
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1)
    fit(m1, [(X, y)], optimizer=opt1, progress=False)
    fit(m2, batches(X, y, 10), optimizer=opt2, grad_accum_steps=4, progress=False)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, atol=1e-6, rtol=1e-5)


def test_only_trainable_parameters_change(digits):
    Xtr, ytr, _, _ = digits
    model = mlp()
    model[0] = LoRALinear(model[0], r=4, lora_alpha=4)
    for p in model[2].parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    h = fit(model, batches(Xtr, ytr, 128), epochs=1, lr=1e-2, progress=False)
    assert h.n_trainable == 4 * (64 + 32)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"0.lora_A.default.weight", "0.lora_B.default.weight"}


def test_gradient_clipping_bounds_the_step():
    torch.manual_seed(0)
    lin = nn.Linear(4, 1)
    x, y = torch.randn(8, 4), torch.randn(8, 1) * 1000  # huge loss, huge gradient
    w0 = torch.cat([p.detach().flatten() for p in lin.parameters()])
    fit(lin, [(x, y)], optimizer=torch.optim.SGD(lin.parameters(), lr=1.0), loss_fn=nn.functional.mse_loss,
        max_grad_norm=0.5, progress=False)
    delta = torch.cat([p.detach().flatten() for p in lin.parameters()]) - w0
    assert 0.4 < delta.norm() <= 0.5 + 1e-6  # SGD with lr=1: the step is the clipped gradient


def test_mode_is_restored_and_dropout_is_off_in_evaluate():
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(64, 10))
    X, y = torch.randn(50, 64), torch.randint(0, 10, (50,))
    model.eval()
    fit(model, [(X, y)], progress=False)
    assert not model.training
    model.train()
    a, b = evaluate(model, [(X, y)]), evaluate(model, [(X, y)])
    assert a == b and model.training


def test_transformers_model_with_dict_batches():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(cfg)
    # label = whether token 7 occurs in the sequence: learnable
    ids = torch.randint(8, 50, (64, 8))
    labels = torch.randint(0, 2, (64,))
    ids[labels == 1, 3] = 7
    data = [{"input_ids": ids[i:i + 16], "attention_mask": torch.ones(16, 8, dtype=torch.long),
             "labels": labels[i:i + 16]} for i in range(0, 64, 16)]
    before = evaluate(model, data)
    h = fit(model, data, epochs=15, lr=3e-3, val_loader=data, progress=False)
    after = evaluate(model, data)
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] > 0.9
    assert h.steps == 60 and not math.isnan(h.val_accuracy[-1])
    # the same with an explicit loss_fn on the logits
    h2 = fit(model, data, epochs=1, loss_fn=nn.functional.cross_entropy, progress=False)
    assert h2.steps == 4


def test_bad_arguments_raise():
    X, y = torch.randn(10, 64), torch.randint(0, 10, (10,))
    data = [(X, y)]
    with pytest.raises(ValueError, match="epochs"):
        fit(mlp(), data, epochs=0)
    with pytest.raises(ValueError, match="lr"):
        fit(mlp(), data, lr=-1.0)
    with pytest.raises(ValueError, match="max_steps"):
        fit(mlp(), data, max_steps=0)
    with pytest.raises(ValueError, match="max_grad_norm"):
        fit(mlp(), data, max_grad_norm=0)
    with pytest.raises(ValueError, match="grad_accum_steps"):
        fit(mlp(), data, grad_accum_steps=0)
    with pytest.raises(ValueError, match="weight_decay"):
        fit(mlp(), data, weight_decay=-0.1)
    m = mlp()
    with pytest.raises(ValueError, match="either optimizer or lr"):
        fit(m, data, optimizer=torch.optim.SGD(m.parameters(), lr=0.1), lr=0.1)
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        fit(m, data, optimizer="adamw")
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit(frozen, data)
    with pytest.raises(ValueError, match="tuple"):
        fit(mlp(), [(X, y, y)], progress=False)
    with pytest.raises(ValueError, match="empty"):
        fit(mlp(), [], progress=False)
    with pytest.raises(ValueError, match="no batches"):
        evaluate(mlp(), [])


@pytest.mark.parametrize("kwargs, name", [
    ({"epochs": True}, "epochs"), ({"epochs": 2.0}, "epochs"), ({"eval_every": 1.5}, "eval_every"),
    ({"max_steps": "3"}, "max_steps"), ({"grad_accum_steps": True}, "grad_accum_steps"), ({"lr": "1e-3"}, "lr"),
    ({"max_grad_norm": True}, "max_grad_norm"), ({"weight_decay": None}, "weight_decay"),
    ({"progress": 1}, "progress"),
])
def test_arguments_of_the_wrong_type_are_type_errors_and_change_nothing(kwargs, name):
    model = mlp()
    before = snapshot.take(model)
    with pytest.raises(TypeError, match=f"^{name} must be"):
        fit(model, [(torch.randn(4, 64), torch.randint(0, 10, (4,)))], **kwargs)
    snapshot.assert_same(before, model)


def _dict_batches(n=3, size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 100, (size, 10), generator=g),
             "labels": torch.randint(0, 3, (size,), generator=g)} for _ in range(n)]


def test_an_optimizer_built_before_inject_lora_is_refused_and_changes_nothing(tiny):
    model = tiny.bert()
    stale = torch.optim.AdamW(model.parameters(), lr=1e-2)  # holds the base weights, which inject_lora freezes
    inject_lora(model, LoRAConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    before = snapshot.take(model)
    fix = re.escape("torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=...)")
    with pytest.raises(ValueError, match=r"does not hold 8 of the model's 8 trainable parameters .*lora_A.*"
                                         r"Build it after that.*" + fix):
        fit(model, _dict_batches(), optimizer=stale, progress=False)
    snapshot.assert_same(before, model)
    assert not stale.state and all(p.grad is None for p in model.parameters())  # not a single step
    with pytest.raises(ValueError, match="does not hold 8 of"):  # train_step refuses it the same way
        train_step(model, _dict_batches(1), stale)
    snapshot.assert_same(before, model)
    # frozen parameters only (the trainable ones are missing): refused; all of them, frozen included: fine
    frozen_only = torch.optim.AdamW([p for p in model.parameters() if not p.requires_grad], lr=1e-2)
    with pytest.raises(ValueError, match=r"does not hold 8 of .*\(it holds frozen parameters only\)"):
        fit(model, _dict_batches(), optimizer=frozen_only, progress=False)
    snapshot.assert_same(before, model)
    h = fit(model, _dict_batches(), optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2), progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before["params"][n][0])}
    assert h.steps == 3 and changed == {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(changed) == 8 and all("lora_" in n for n in changed)


def test_an_optimizer_missing_a_parameter_made_trainable_later_is_refused(tiny):
    model = tiny.bert()
    inject_lora(model, LoRAConfig(r=2, lora_alpha=4, target_modules=["query"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.classifier.requires_grad_(True)  # the head, after the optimizer was built
    with pytest.raises(ValueError, match=r"does not hold 2 of the model's 6 trainable parameters "
                                         r"\('classifier.weight', 'classifier.bias'\)"):
        fit(model, _dict_batches(), optimizer=opt, progress=False)


def test_train_step_is_one_step_of_fit_and_accumulates_the_mean():
    X, y = torch.randn(40, 64), torch.randint(0, 10, (40,))
    m1, m2, m3 = mlp(), mlp(), mlp()
    fit(m1, [(X, y)], optimizer=torch.optim.SGD(m1.parameters(), lr=0.1), max_grad_norm=1.0, progress=False)
    loss = train_step(m2, batches(X, y, 10), torch.optim.SGD(m2.parameters(), lr=0.1), max_grad_norm=1.0)
    with torch.no_grad():
        want = nn.functional.cross_entropy(m3(X), y).item()
    assert loss == pytest.approx(want, abs=1e-6)  # the mean loss of the micro-batches, before the step
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, atol=1e-6, rtol=1e-5)
    assert all(p.grad is None for p in m2.parameters())


def test_an_epochs_leftover_batches_make_one_step_on_their_mean():
    X, y = torch.randn(50, 64), torch.randint(0, 10, (50,))
    m1, m2 = mlp(), mlp()
    h = fit(m1, batches(X, y, 10), optimizer=torch.optim.SGD(m1.parameters(), lr=0.1), grad_accum_steps=3,
            progress=False)  # 5 batches: a step on 3, then one on the 2 left over
    fit(m2, [(X[:30], y[:30]), (X[30:], y[30:])], optimizer=torch.optim.SGD(m2.parameters(), lr=0.1),
        progress=False)
    assert h.steps == 2
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, atol=1e-6, rtol=1e-5)


def test_train_step_refuses_what_is_not_a_list_of_batches():
    model = mlp()
    X, y = torch.randn(4, 64), torch.randint(0, 10, (4,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = snapshot.take(model)
    with pytest.raises(ValueError, match="got Tensor"):  # one batch (x, y) where a list of them is wanted
        train_step(model, (X, y), opt)
    with pytest.raises(TypeError, match=r"pass \[batch\]"):
        train_step(model, {"input_ids": X}, opt)
    with pytest.raises(ValueError, match="empty"):
        train_step(model, [], opt)
    with pytest.raises(TypeError, match="max_grad_norm"):
        train_step(model, [(X, y)], opt, max_grad_norm="1")
    snapshot.assert_same(before, model)
    assert not opt.state


def test_nan_loss_is_reported():
    X, y = torch.full((4, 64), float("nan")), torch.zeros(4, dtype=torch.long)
    with pytest.raises(FloatingPointError, match="step 1"):
        fit(mlp(), [(X, y)], progress=False)


def test_stale_gradients_are_cleared():
    X, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    m1, m2 = mlp(), mlp()
    for p in m2.parameters():
        p.grad = torch.full_like(p, 100.0)  # left over from some earlier backward
    fit(m1, [(X, y)], optimizer=torch.optim.SGD(m1.parameters(), lr=0.1), progress=False)
    fit(m2, [(X, y)], optimizer=torch.optim.SGD(m2.parameters(), lr=0.1), progress=False)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2)
