"""Tables and plots of the LMC experiments (`tna_hf.experiments.lmc`): mean ± std cells, curves, sweeps."""

from __future__ import annotations

import argparse
import json
import os
from typing import Optional

from tna_hf.metrics import plot_interpolation_curves, plot_series

METRIC_LABELS = {
    "average_accuracy": "Avg. Acc. (%)",
    "interpolated_accuracy": "Interp. Acc. (%)",
    "accuracy_barrier": "Acc. barrier",
    "loss_barrier": "Loss barrier",
    "matched_interpolated_accuracy": "Interp. Acc. after WM (%)",
    "matched_accuracy_barrier": "Acc. barrier after WM",
    "matching_iterations": "WM iterations",
}
PERCENT_METRICS = {"average_accuracy", "interpolated_accuracy", "matched_interpolated_accuracy"}


def format_metric(name: str, summary: Optional[dict]) -> str:
    if summary is None:
        return "-"
    scale = 100.0 if name in PERCENT_METRICS else 1.0
    digits = 1 if name in PERCENT_METRICS or name == "matching_iterations" else 3
    return f"{scale * summary['mean']:.{digits}f} ± {scale * summary['std']:.{digits}f}"


def format_table(rows: list[dict]) -> str:
    """Render rows as a Markdown table: the setting columns, then each metric as mean ± std."""
    if not rows:
        return "(no rows)"
    setting_keys = [key for key in rows[0] if key not in ("metrics", "patterns")]
    metric_names = [name for name in METRIC_LABELS if any(name in row["metrics"] for row in rows)]
    header = setting_keys + [METRIC_LABELS[name] for name in metric_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{row[key]:g}" if isinstance(row[key], float) else str(row[key]) for key in setting_keys]
        cells += [format_metric(name, row["metrics"].get(name)) for name in metric_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_plots(args: argparse.Namespace, curves_by_label: dict, rows: list[dict], output_dir: str) -> list[str]:
    """Draw the interpolation curves of the first seed and, for rho_sweep and depth_width, the sweeps.

    Args:
        args: The parsed options of the run.
        curves_by_label: Setting label -> seed -> `InterpolationCurve`.
        rows: The table rows.
        output_dir: Folder of the images.

    Returns:
        The written paths.
    """
    paths = []
    first_seed = args.seeds[0]
    curves = {label: by_seed[first_seed] for label, by_seed in curves_by_label.items() if first_seed in by_seed}
    if curves:
        # Keep each figure readable: at most 6 curves, preferring vanilla and the default rho.
        chosen = dict(list(curves.items())[:6])
        if args.experiment == "rho_sweep":
            chosen = {
                label: curve for label, curve in curves.items() if "vanilla" in label or f"rho={args.rho:g}" in label
            }
        metric = "loss" if args.experiment == "tasks" else "accuracy"
        if args.experiment == "tasks":
            for task in args.tasks:
                task_curves = {label: curve for label, curve in curves.items() if label.startswith(task)}
                paths.append(
                    plot_interpolation_curves(
                        task_curves, os.path.join(output_dir, f"curves_{task}.png"), metric="loss", title=task
                    )
                )
        else:
            paths.append(
                plot_interpolation_curves(
                    chosen,
                    os.path.join(output_dir, "curves.png"),
                    metric=metric,
                    title=f"{args.experiment}: {args.dataset}, seed a={first_seed}",
                )
            )

    if args.experiment == "rho_sweep":
        for model_name in args.models:
            model_rows = [row for row in rows if row["model"] == model_name]
            vanilla = next(row for row in model_rows if row["method"] == "vanilla")
            for method in ("TNA-PFN", "prune"):
                method_rows = [vanilla] + [row for row in model_rows if row["method"] == method]
                if len(method_rows) == 1:
                    continue
                rhos = [row["rho"] for row in method_rows]
                series = {
                    f"{method} Avg. Acc.": _series(method_rows, "average_accuracy"),
                    f"{method} Interp. Acc.": _series(method_rows, "interpolated_accuracy"),
                }
                paths.append(
                    plot_series(
                        rhos,
                        series,
                        os.path.join(output_dir, f"rho_sweep_{model_name}_{method}.png"),
                        xlabel="rho (mask ratio)",
                        ylabel="test accuracy (%)",
                        title=f"{model_name}, {args.dataset}",
                        shade_between=tuple(series),
                    )
                )
    if args.experiment == "depth_width":
        for axis, fixed_key, fixed_value in (("depth", "width", 200), ("width", "depth", 2)):
            series = {}
            for method in ("vanilla", "TNA-PFN"):
                selected = sorted(
                    (row for row in rows if row["method"] == method and row[fixed_key] == fixed_value),
                    key=lambda r: r[axis],
                )
                series[method] = _series(selected, "accuracy_barrier", scale=1.0)
                x_values = [row[axis] for row in selected]
            paths.append(
                plot_series(
                    x_values,
                    series,
                    os.path.join(output_dir, f"barrier_vs_{axis}.png"),
                    xlabel=axis,
                    ylabel="accuracy barrier",
                    title=f"MLP, {args.dataset}",
                )
            )
    return paths


def _series(rows: list[dict], metric: str, scale: float = 100.0) -> tuple[list[float], list[float]]:
    return (
        [scale * row["metrics"][metric]["mean"] for row in rows],
        [scale * row["metrics"][metric]["std"] for row in rows],
    )


def _write_json(payload: dict, path: str) -> None:
    tmp_path = path + ".tmp"
    with open(tmp_path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
    os.replace(tmp_path, path)
