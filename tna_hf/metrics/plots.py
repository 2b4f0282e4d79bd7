"""Plots of linear mode connectivity: interpolation curves with the barrier shaded, and sweeps with error bars.

Figures are drawn with matplotlib's Agg backend, written to a temporary file and renamed into place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Optional

from .barriers import InterpolationCurve


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    extension = os.path.splitext(path)[1].lstrip(".") or "png"
    tmp_path = path + ".tmp"
    figure.savefig(tmp_path, format=extension, bbox_inches="tight", dpi=120)
    os.replace(tmp_path, path)
    _pyplot().close(figure)
    return path


def plot_interpolation_curves(
    curves: Mapping[str, InterpolationCurve],
    path: str | os.PathLike,
    metric: str = "accuracy",
    title: Optional[str] = None,
) -> str:
    """Plot each curve against alpha with the gap to the straight line between its endpoints shaded.

    The shaded area is where the interpolated model falls below (accuracy) or rises above (loss) the
    straight line between the endpoint values. The largest loss gap on the grid is the loss barrier
    (equation 1); the accuracy barrier (equation 2) is that gap divided by the line's height.

    Args:
        curves: Label -> curve, e.g. `{"vanilla": ..., "TNA-PFN rho=0.4": ...}`.
        path: Output image path (`.png`, `.pdf`, `.svg`).
        metric: `"accuracy"` (in percent) or `"loss"`.
        title: Figure title.

    Returns:
        The written path.
    """
    if metric not in ("accuracy", "loss"):
        raise ValueError(f"metric must be 'accuracy' or 'loss', got {metric!r}.")
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5, 3.6))
    for label, curve in curves.items():
        if metric == "accuracy":
            if curve.accuracies is None:
                raise ValueError(f"Curve {label!r} has no accuracies (a regression task); plot metric='loss'.")
            values = [100 * value for value in curve.accuracies]
            start, end = 100 * curve.accuracy_2, 100 * curve.accuracy_1
        else:
            values = list(curve.losses)
            start, end = curve.loss_2, curve.loss_1
        linear = [alpha * end + (1 - alpha) * start for alpha in curve.alphas]
        (line,) = axes.plot(curve.alphas, values, marker="o", markersize=3, label=label)
        axes.plot(curve.alphas, linear, linestyle="--", color=line.get_color(), linewidth=0.8)
        # Shade only the barrier side: below the chord for accuracy, above it for loss.
        if metric == "accuracy":
            barrier_side = [value < chord for value, chord in zip(values, linear)]
        else:
            barrier_side = [value > chord for value, chord in zip(values, linear)]
        axes.fill_between(
            curve.alphas, values, linear, where=barrier_side, interpolate=True, color=line.get_color(), alpha=0.2
        )
    axes.set_xlabel("alpha (weight of model 1)")
    axes.set_ylabel("test accuracy (%)" if metric == "accuracy" else "test loss")
    if title:
        axes.set_title(title)
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_series(
    x_values: Sequence[float],
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    xlabel: str,
    ylabel: str,
    title: Optional[str] = None,
    shade_between: Optional[tuple[str, str]] = None,
) -> str:
    """Plot mean +/- std lines against `x_values` (a rho sweep, a depth or width sweep).

    Args:
        x_values: The swept values.
        series: Label -> (means, stds), one entry per x value.
        path: Output image path.
        xlabel: Label of the x axis.
        ylabel: Label of the y axis.
        title: Figure title.
        shade_between: Two labels whose means are filled between, e.g. average and interpolated
            accuracy, which draws the accuracy barrier as in the paper's rho sweep.

    Returns:
        The written path.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5, 3.6))
    for label, (means, stds) in series.items():
        axes.errorbar(x_values, means, yerr=stds, marker="o", markersize=3, capsize=3, label=label)
    if shade_between is not None:
        upper, lower = (series[label][0] for label in shade_between)
        axes.fill_between(x_values, upper, lower, alpha=0.15, color="gray")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    axes.legend(fontsize=8)
    return _save(figure, path)
