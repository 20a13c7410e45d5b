r"""The course's standard pictures.  (Chapters 01 and 03; used throughout)

Four plots come back again and again:

* ``singular_values`` -- the spectrum :math:`\sigma_1 \ge \sigma_2 \ge \dots` of one or more
  matrices (chapter 01). A matrix of rank :math:`r` has exactly :math:`r` non-zero singular values;
  a fast-decaying spectrum means a low-rank approximation :math:`\sum_{i \le r} \sigma_i u_i v_i^T`
  loses little.
* ``loss_curves`` -- training loss per optimiser step (and validation loss) from
  ``minilora.train.fit`` (chapter 03).
* ``accuracy_vs_params`` -- accuracy against the number of trainable parameters, on a log axis:
  the trade-off LoRA is about (chapter 03).
* ``param_bars`` -- trainable-parameter counts as bars on a log axis (chapters 03 and 04).

Each function draws on ``ax`` (or a new figure), labels its axes, and returns the ``Axes``;
the notebook calls ``plt.show()``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

__all__ = ["singular_values", "loss_curves", "accuracy_vs_params", "param_bars"]


def _axes(ax: Axes | None, figsize: tuple[float, float] = (6.4, 4.0)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _to_numpy(m: Any) -> np.ndarray:
    if isinstance(m, torch.Tensor):
        m = m.detach().to(torch.float64).cpu().numpy()
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"singular_values expects 2-D matrices, got shape {m.shape}; "
                         "reshape a conv or stacked weight to (out, in) first.")
    return m


def singular_values(matrices: Mapping[str, Any], ax: Axes | None = None, normalize: bool = True,
                    log: bool = True) -> Axes:
    r"""Plot the singular values of each matrix, largest first, one line per matrix.

    Args:
        matrices: name -> 2-D tensor or array (the names go into the legend).
        normalize: divide by :math:`\sigma_1` so that spectra of different sizes compare.
        log: log-scale y axis (tiny singular values stay visible).
    """
    if not isinstance(matrices, Mapping) or not matrices:
        raise ValueError("singular_values expects a non-empty dict {name: matrix}, "
                         "e.g. singular_values({'W': W}).")
    ax = _axes(ax)
    for name, m in matrices.items():
        s = np.linalg.svd(_to_numpy(m), compute_uv=False)
        if normalize and s[0] > 0:
            s = s / s[0]
        if log:  # exact zeros cannot be drawn on a log axis: show them at machine precision
            s = np.maximum(s, np.finfo(np.float64).eps * (1.0 if normalize else max(s[0], 1.0)))
        ax.plot(np.arange(1, len(s) + 1), s, marker="o", markersize=3, label=str(name))
    if log:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("index $i$ (largest first)")
    ax.set_ylabel(r"$\sigma_i / \sigma_1$" if normalize else r"singular value $\sigma_i$")
    ax.set_title("Singular-value spectra")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return ax


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    if window <= 1 or len(y) == 0:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    for i in range(len(y)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def _named_histories(histories: tuple) -> list[tuple[str, Any]]:
    if len(histories) == 1 and isinstance(histories[0], Mapping):
        return [(str(k), v) for k, v in histories[0].items()]
    return [(getattr(h, "name", None) or f"run {i}", h) for i, h in enumerate(histories)]


def loss_curves(*histories: Any, ax: Axes | None = None, smooth: int = 1, val: bool = True,
                logy: bool = False, title: str = "Loss curves", legend_loc: str = "best") -> Axes:
    """Training loss per optimiser step (solid) and validation loss (dashed, markers).

    Args:
        histories: ``History`` objects from ``minilora.train.fit``, or one dict name -> History.
        smooth: moving-average window (in steps) for the training loss; 1 = raw.
        val: also draw the validation points, when the history has them.
        logy: log-scale y axis.
        legend_loc: where the legend goes (matplotlib's ``loc``), e.g. to keep it off a curve.
    """
    named = _named_histories(histories)
    if not named:
        raise ValueError("loss_curves needs at least one History (what minilora.train.fit returns).")
    if not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"smooth is a moving-average window in steps (an int >= 1), got {smooth!r}.")
    ax = _axes(ax)
    for name, h in named:
        if not hasattr(h, "train_loss"):
            raise ValueError(f"{name!r} is a {type(h).__name__}, not a History from minilora.train.fit.")
        y = np.asarray(h.train_loss, dtype=np.float64)
        (line,) = ax.plot(np.arange(1, len(y) + 1), _smooth(y, smooth), label=f"{name} (train)")
        if val and getattr(h, "val_loss", None):
            ax.plot(h.val_step, h.val_loss, "o--", color=line.get_color(), markersize=4,
                    label=f"{name} (val)")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss" + (f" (moving average of {smooth})" if smooth > 1 else ""))
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc=legend_loc)
    return ax


def accuracy_vs_params(results: Mapping[str, tuple], ax: Axes | None = None,
                       connect: Sequence[str] | None = None, ylabel: str = "test accuracy",
                       title: str = "Accuracy against trainable parameters") -> Axes:
    """Accuracy against trainable parameters (log x axis), one labelled point per run.

    Args:
        results: name -> (trainable parameters, accuracy), or (trainable parameters, mean, std) to
            draw an error bar of one standard deviation (e.g. over seeds).
        connect: names to join with a line, in this order (e.g. the LoRA ranks).

    Labels alternate above and below their points, from left to right, so that neighbours do not
    overlap; the rightmost label is drawn to the left of its point, so that it stays in the plot.
    """
    if not isinstance(results, Mapping) or not results:
        raise ValueError("accuracy_vs_params expects a non-empty dict {name: (n_params, accuracy)}.")
    for name, v in results.items():
        if len(v) not in (2, 3) or not v[0] > 0:
            raise ValueError(f"results[{name!r}] must be (n_params > 0, accuracy) or (n_params > 0, mean, std), "
                             f"got {v!r}.")
    missing = [n for n in (connect or []) if n not in results]
    if missing:
        raise ValueError(f"connect names {missing} are not in results; names are {list(results)}.")
    ax = _axes(ax)
    if connect:
        ax.plot([results[n][0] for n in connect], [results[n][1] for n in connect], "-",
                color="0.6", zorder=1)
    order = sorted(results, key=lambda n: results[n][0])
    for i, name in enumerate(order):
        n, acc, *std = results[name]
        if std:
            ax.errorbar([n], [acc], yerr=[std[0]], fmt="o", capsize=3, zorder=2, label=name)
        else:
            ax.scatter([n], [acc], zorder=2, label=name)
        last = i == len(order) - 1
        ax.annotate(name, (n, acc), textcoords="offset points", xytext=(-6 if last else 6, 8 if i % 2 else -14),
                    ha="right" if last else "left", fontsize="small")
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.12)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    return ax


def param_bars(counts: Mapping[str, int], ax: Axes | None = None, log: bool = True,
               title: str = "Trainable parameters") -> Axes:
    """Horizontal bars of parameter counts (log x axis by default), each bar labelled with its count."""
    if not isinstance(counts, Mapping) or not counts:
        raise ValueError("param_bars expects a non-empty dict {name: number of parameters}.")
    bad = {k: v for k, v in counts.items() if not v > 0}
    if bad and log:
        raise ValueError(f"counts must be > 0 on a log axis, got {bad}; pass log=False to draw zeros.")
    ax = _axes(ax, figsize=(6.4, 0.45 * len(counts) + 1.2))
    names, values = list(map(str, counts)), [int(v) for v in counts.values()]
    y = np.arange(len(names))
    ax.barh(y, values, color="tab:blue")
    ax.set_yticks(y, names)
    ax.invert_yaxis()  # first entry on top
    for yi, v in zip(y, values):
        ax.annotate(f"{v:,}", (v, yi), textcoords="offset points", xytext=(3, -3), fontsize="small")
    if log:
        ax.set_xscale("log")
    if max(values) > 0:  # room on the right for the labels
        ax.set_xlim(right=max(values) * (8 if log else 1.25))
    ax.set_xlabel("parameters" + (" (log scale)" if log else ""))
    ax.set_title(title)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return ax
