"""minilora.course.plots: each plot draws what it is given, labels its axes, returns the Axes, rejects bad input."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from minilora.course import plots  # noqa: E402
from minilora.train import History  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_singular_values_draws_each_spectrum():
    g = torch.Generator().manual_seed(0)
    rank2 = torch.randn(10, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 6, generator=g, dtype=torch.float64)
    full = np.random.default_rng(0).normal(size=(10, 6))
    ax = plots.singular_values({"rank 2": rank2, "full": full})
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == ["rank 2", "full"]
    y = lines[0].get_ydata()
    assert len(y) == 6 and y[0] == pytest.approx(1.0)  # normalised by sigma_1
    assert y[1] > 1e-3 and np.all(y[2:] < 1e-12)  # exactly two non-zero singular values
    assert ax.get_yscale() == "log" and ax.get_xlabel() and ax.get_ylabel()
    ax = plots.singular_values({"W": full}, normalize=False, log=False)
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), np.linalg.svd(full, compute_uv=False))
    assert ax.get_yscale() == "linear"


def test_loss_curves_draws_histories():
    h1 = History(name="a", train_loss=[3.0, 2.0, 1.0, 0.5], val_step=[2, 4], val_loss=[2.5, 0.8],
                 val_accuracy=[0.5, 0.9])
    h2 = History(train_loss=[1.0, 1.0])
    ax = plots.loss_curves(h1, h2)
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert labels == ["a (train)", "a (val)", "run 1 (train)"]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [3.0, 2.0, 1.0, 0.5])
    np.testing.assert_allclose(ax.get_lines()[1].get_xdata(), [2, 4])
    ax = plots.loss_curves({"x": h1}, smooth=2, val=False)
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [3.0, 2.5, 1.5, 0.75])  # moving average
    assert len(ax.get_lines()) == 1 and "moving average" in ax.get_ylabel()
    assert ax.get_xlabel() == "optimiser step"
    assert plots.loss_curves(h1, legend_loc="upper right").get_legend()._loc == 1


def test_accuracy_vs_params_and_param_bars():
    res = {"head": (100, 0.8), "LoRA r=1": (300, 0.9), "LoRA r=4": (900, 0.95), "full": (10_000, 0.96)}
    ax = plots.accuracy_vs_params(res, connect=["head", "LoRA r=1", "LoRA r=4"])
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "test accuracy"
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), [100, 300, 900])
    assert len(ax.collections) == 4  # one point per run
    labels = {t.get_text(): t for t in ax.texts}
    assert labels["full"].get_horizontalalignment() == "right"  # the rightmost label stays inside the plot
    assert labels["LoRA r=1"].xyann[1] != labels["LoRA r=4"].xyann[1]  # neighbours alternate above and below
    ax = plots.accuracy_vs_params({"a": (10, 0.5, 0.02), "b": (100, 0.7, 0.01)}, ylabel="mean accuracy")
    assert len(ax.containers) == 2  # an error bar per run
    ax = plots.param_bars({"full": 10_000, "LoRA": 300})
    assert ax.get_xscale() == "log" and "parameters" in ax.get_xlabel()
    assert [p.get_width() for p in ax.patches] == [10_000, 300]


@pytest.mark.parametrize("call,match", [
    (lambda: plots.singular_values([]), "non-empty dict"),
    (lambda: plots.singular_values({"v": torch.ones(3)}), "2-D"),
    (lambda: plots.loss_curves(), "at least one History"),
    (lambda: plots.loss_curves({"a": [1.0, 2.0]}), "not a History"),
    (lambda: plots.loss_curves(History(train_loss=[1.0]), smooth=0), "smooth"),
    (lambda: plots.accuracy_vs_params({"a": (0, 0.5)}), "n_params > 0"),
    (lambda: plots.accuracy_vs_params({"a": (10, 0.5)}, connect=["b"]), "not in results"),
    (lambda: plots.param_bars({"a": 0}), "log=False"),
    (lambda: plots.param_bars({}), "non-empty dict"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
