"""minilora.course.experiments: the chapter 05 protocol is deterministic per seed, and guards its splits."""
import numpy as np
import pytest
import torch

from minilora.config import LoRAConfig
from minilora.course.experiments import (
    LEARNING_RATES,
    SETUPS,
    accuracy,
    build_model,
    fit_probe,
    random_like,
    train_multitask,
    train_sentiment,
    train_task,
)

#: Losses of train_sentiment(r=2 on query, lr=5e-3, seed=1, steps=3) and train_multitask(r=2 on query, lr=5e-3,
#: seed=1, steps=4), recorded (CPU, torch 2.13) from the code that produced results/ before fit and
#: train_multitask shared minilora.train.train_step; the same code gives them bit for bit today.
RECORDED_SENTIMENT = [0.6974665522575378, 0.7019137740135193, 0.6695851683616638]
RECORDED_MULTITASK = {"sentiment": [0.6994873285293579, 0.6966691017150879],
                      "domain": [1.4083064794540405, 1.3421294689178467]}


pytestmark = pytest.mark.usefixtures("needs_minilm")


def test_every_setup_has_its_own_learning_rates():
    assert set(LEARNING_RATES) == set(SETUPS)
    for rates in LEARNING_RATES.values():
        assert len(rates) >= 4 and rates == sorted(rates)


def test_a_run_is_reproducible_for_its_seed():
    setup = LoRAConfig(r=2, lora_alpha=4, target_modules=["query"], modules_to_save=["classifier"])
    first = train_sentiment(setup, lr=5e-3, seed=1, steps=3, progress=False)
    again = train_sentiment(setup, lr=5e-3, seed=1, steps=3, progress=False)
    other = train_sentiment(setup, lr=5e-3, seed=2, steps=3, progress=False)
    assert first.history.train_loss == again.history.train_loss
    assert first.history.train_loss != other.history.train_loss
    # recorded from the protocol as it produced results/: the numbers must not move
    assert first.history.train_loss == pytest.approx(RECORDED_SENTIMENT, abs=1e-6)
    assert first.history.lr[0] == pytest.approx(5e-3 * (1 - 1 / 3))  # linear decay to zero over the steps
    assert first.trainable == 6 * 2 * (384 + 384) + 384 * 2 + 2  # r=2 on 6 query layers, and the head
    assert 0.0 < first.fraction < 0.01 and first.peak_mb >= 0


def test_setups_and_splits_are_checked():
    with pytest.raises(ValueError, match="LoRAConfig or 'full'"):
        build_model("lora")
    model, tok = build_model("full")
    with pytest.raises(ValueError, match="'validation' \\(for choosing\\) or 'test' \\(to report\\)"):
        accuracy(model, tok, "train")


def test_the_probe_fits_and_reports_validation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = x[:, 0] > 0
    features = {"train": x[:100], "validation": x[100:]}
    labels = {"train": y[:100], "validation": y[100:]}
    probe, val = fit_probe(features, labels, C=10.0)
    assert val > 0.9 and probe.score(features["train"], labels["train"]) > 0.9


def test_a_domain_run_has_a_four_way_head_and_its_own_labels():
    setup = LoRAConfig(r=2, lora_alpha=4, target_modules=["query"], modules_to_save=["classifier"])
    run = train_task("domain", setup, lr=5e-3, seed=1, steps=2, progress=False)
    assert run.model.classifier.modules_to_save["default"].out_features == 4
    assert run.trainable == 6 * 2 * (384 + 384) + 384 * 4 + 4
    with pytest.raises(ValueError, match="unknown task 'topic'"):
        train_task("topic", setup, lr=5e-3, steps=1)


def test_learning_rate_and_steps_are_checked_before_a_model_is_loaded():
    setup = LoRAConfig(r=2, lora_alpha=4, target_modules=["query"], modules_to_save=["classifier"])
    with pytest.raises(TypeError, match="^lr must be"):
        train_task("sentiment", setup, lr="5e-3")
    with pytest.raises(ValueError, match="^lr must be a number > 0"):
        train_sentiment(setup, lr=0.0)
    with pytest.raises(TypeError, match="^steps must be an integer"):
        train_sentiment(setup, lr=1e-3, steps=True)
    with pytest.raises(ValueError, match="^steps must be an integer >= 1"):
        train_multitask(LoRAConfig(r=2, target_modules=["query"]), lr=1e-3, steps=0)


def test_the_multitask_run_alternates_tasks_and_trains_one_body_and_two_heads():
    setup = LoRAConfig(r=2, lora_alpha=4, target_modules=["query"])
    fresh, _ = build_model(setup, seed=1)
    run = train_multitask(setup, lr=5e-3, seed=1, steps=4)
    again = train_multitask(setup, lr=5e-3, seed=1, steps=4)
    assert len(run.losses["sentiment"]) == len(run.losses["domain"]) == 2
    assert run.losses == again.losses  # reproducible for its seed
    for task, recorded in RECORDED_MULTITASK.items():  # and the same numbers as its own loop gave before train_step
        assert run.losses[task] == pytest.approx(recorded, abs=1e-6)
    assert run.model.classifier is run.heads["sentiment"] and run.heads["domain"].out_features == 4
    assert not torch.equal(run.heads["sentiment"].weight, fresh.classifier.weight)  # the heads trained ...
    layer = run.model.bert.encoder.layer[0].attention.self.query
    assert layer.lora_B["default"].weight.abs().sum() > 0  # ... and the shared adapter too
    with pytest.raises(ValueError, match="without modules_to_save"):
        train_multitask(LoRAConfig(r=2, target_modules=["query"], modules_to_save=["classifier"]), lr=1e-3)


def test_loraplus_trains_b_faster_and_needs_adapters():
    """``loraplus_lr_ratio`` (chapter 09): B learns at lr * ratio, A at lr; full fine-tuning refuses it.

    Two steps, the rate lr then lr / 2. Adam's first step moves each entry by its rate times a sign; A's
    first gradient is 0 (B = 0), so A moves only at the second step, by 0.744 * lr / 2 at most (Adam's
    bias-corrected second step)."""
    setup = LoRAConfig(r=2, lora_alpha=4, target_modules=["query"], modules_to_save=["classifier"])
    start, _ = build_model(setup, seed=0)
    run = train_sentiment(setup, lr=1e-3, seed=0, steps=2, progress=False, loraplus_lr_ratio=16)
    names = ("bert.encoder.layer.0.attention.self.query.lora_A.default.weight",
             "bert.encoder.layer.0.attention.self.query.lora_B.default.weight")
    before, after = dict(start.named_parameters()), dict(run.model.named_parameters())
    move_A, move_B = ((after[n] - before[n]).abs().max().item() for n in names)
    assert 0.3e-3 < move_A < 0.38e-3  # 0.744 * 1e-3 / 2 = 3.72e-4
    assert 16e-3 - 1e-6 < move_B < 24e-3 + 1e-4  # 1e-3 * 16 at the first step, then at most (1e-3 / 2) * 16
    with pytest.raises(ValueError, match="needs LoRA adapters"):
        train_sentiment("full", lr=1e-3, seed=0, steps=1, progress=False, loraplus_lr_ratio=16)


def test_loraplus_with_head_lr_moves_the_head_at_its_own_rate():
    """``head_lr`` (chapter 09's fair LoRA+): the head, weight and bias, leaves PEFT's groups for its own.

    Adam's first step moves every entry of a parameter whose gradient is nonzero by its rate: the head's
    weight and bias by exactly head_lr, where PEFT's groups would move them by lr and lr * ratio."""
    setup = LoRAConfig(r=2, lora_alpha=4, target_modules=["query"], modules_to_save=["classifier"])
    start, _ = build_model(setup, seed=0)
    head = ("classifier.modules_to_save.default.weight", "classifier.modules_to_save.default.bias")
    moved = {}
    for head_lr in (None, 5e-3):
        run = train_sentiment(setup, lr=1e-3, seed=0, steps=1, progress=False, loraplus_lr_ratio=16, head_lr=head_lr)
        before, after = dict(start.named_parameters()), dict(run.model.named_parameters())
        moved[head_lr] = [(after[n] - before[n]).abs().max().item() for n in head]
    assert moved[None] == pytest.approx([1e-3, 16e-3], rel=1e-3)  # PEFT's groups: weight at lr, bias at lr * 16
    assert moved[5e-3] == pytest.approx([5e-3, 5e-3], rel=1e-3)  # the head apart, at head_lr
    with pytest.raises(ValueError, match="pass loraplus_lr_ratio"):
        train_sentiment(setup, lr=1e-3, seed=0, steps=1, progress=False, head_lr=5e-3)
    with pytest.raises(ValueError, match="needs a trained head"):
        train_sentiment(LoRAConfig(r=2, target_modules=["query"]), lr=1e-3, seed=0, steps=1, progress=False,
                        loraplus_lr_ratio=16, head_lr=5e-3)


def test_random_like_matches_each_layers_norm_and_is_seeded():
    """Ilharco et al.'s control for negation: noise with the norm of the task vector, layer by layer."""
    vector = {"a": torch.arange(12.0).reshape(3, 4), "b": torch.full((2, 2), -3.0)}
    noise = random_like(vector, seed=1)
    assert noise.keys() == vector.keys()
    for name in vector:
        assert noise[name].shape == vector[name].shape
        torch.testing.assert_close(noise[name].norm(), vector[name].norm())
    assert all(torch.equal(noise[n], random_like(vector, seed=1)[n]) for n in vector)  # the same seed, the same draw
    assert not torch.equal(noise["a"], random_like(vector, seed=2)["a"])
    cos = torch.nn.functional.cosine_similarity(noise["a"].flatten(), vector["a"].flatten(), dim=0)
    assert abs(cos) < 0.9  # a direction of its own
    with pytest.raises(ValueError):
        random_like(vector, seed=-1)


def test_train_task_refuses_a_bad_batch_size_before_loading_anything():
    with pytest.raises(ValueError, match="batch_size"):
        train_task("sentiment", "full", 1e-4, steps=1, batch_size=0)
    with pytest.raises(TypeError, match="batch_size"):
        train_task("sentiment", "full", 1e-4, steps=1, batch_size=4.0)
