"""The table, JSON file and plot of the model soup experiment, in the layout of the TNA-PFN paper's Table 8.

Table 8 of Li et al. ("Training-time Neuron Alignment through Permutation Subspace ...") has one
block per dataset and ingredient variation (Diff_seed, Diff_lr) with three rows, "Avg. Acc.",
"Uniform Soup" and "Greedy Soup", and the columns "Vanilla Train" and "TNA-PFN", the latter with
its difference to vanilla training.
"""

from __future__ import annotations

import json
import math
import os

ARM_NAMES = {"vanilla": "Vanilla Train", "tna_pfn": "TNA-PFN"}
DATASET_NAMES = {"fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
ROWS = (
    ("Avg. Acc.", lambda arm: arm["average_test_accuracy"]),
    ("Uniform Soup", lambda arm: arm["uniform_soup"]["test_accuracy"]),
    ("Greedy Soup", lambda arm: arm["greedy_soup"]["test_accuracy"]),
)


def _delta(tna: float, vanilla: float) -> str:
    # Round both to the printed precision first, so the delta agrees with the two printed numbers.
    difference = round(100 * tna, 1) - round(100 * vanilla, 1)
    if abs(difference) < 0.05:
        return "(0.0)"
    arrow = "↑" if difference > 0 else "↓"
    return f"({abs(difference):.1f} {arrow})"


def format_table(results: dict) -> str:
    """Return the test accuracies (percent) of both arms as a Markdown table in the layout of Table 8."""
    block = f"{DATASET_NAMES.get(results['dataset'], results['dataset'])} / Diff_{results['vary']}"
    vanilla = results["arms"]["vanilla"]
    tna = results["arms"]["tna_pfn"]
    lines = [
        f"Model soup, {results['model_description']}; K = {len(vanilla['ingredients'])} ingredients per arm, "
        f"TNA-PFN rho = {tna['rho']}; test accuracy (%) on {results['sizes']['test']} examples",
        "",
        "| Dataset / Type of Soup | Metrics | Vanilla Train | TNA-PFN |",
        "| --- | --- | --- | --- |",
    ]

    for index, (row, value) in enumerate(ROWS):
        first = block if index == 0 else ""
        vanilla_value, tna_value = value(vanilla), value(tna)
        delta = _delta(tna_value, vanilla_value)
        lines.append(f"| {first} | {row} | {100 * vanilla_value:.1f} | {100 * tna_value:.1f} {delta} |")

    # Notes under the table: the shared start, the greedy soups' choices, BatchNorm handling, wall time.
    initial = results["initial_checkpoint"]["test_accuracy"]
    lines.append("")
    lines.append(f"Initial checkpoint (shared start, linear-probe head): {100 * initial:.1f} %.")
    for arm_key in ARM_NAMES:
        arm = results["arms"][arm_key]
        accepted = ", ".join(arm["greedy_soup"]["accepted"])
        lines.append(
            f"{ARM_NAMES[arm_key]}: greedy soup kept {len(arm['greedy_soup']['accepted'])} of "
            f"{len(arm['ingredients'])} ingredients ({accepted}); "
            f"best ingredient {100 * arm['best_test_accuracy']:.1f} %."
        )
    lines.append(f"BatchNorm: {results['batchnorm']}.")
    threads = results["torch_threads"]
    plural = "s" if threads != 1 else ""
    seconds = results["wall_time_seconds"]
    lines.append(f"Wall time {seconds / 60:.1f} min ({seconds:.0f} s) with {threads} torch thread{plural}.")
    return "\n".join(lines)


def write_json(results: dict, path: str) -> None:
    """Write `results` as indented JSON to a temporary file and rename it to `path`."""
    tmp_path = path + ".tmp"
    with open(tmp_path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2, sort_keys=True, allow_nan=True)
        handle.write("\n")
    os.replace(tmp_path, path)


def plot_results(results: dict, path: str) -> None:
    """Plot each arm's ingredients (dots), their mean, and the uniform and greedy soups; save as PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    bar_labels = ("Avg. Acc.", "Uniform Soup", "Greedy Soup")
    width = 0.25
    # Fixed arm order: results.json stores its keys sorted, which would put TNA-PFN first.
    arms = [results["arms"][key] for key in ARM_NAMES]
    for arm_index, arm in enumerate(arms):
        values = [100 * value(arm) for _, value in ROWS]
        positions = [arm_index + (offset - 1) * width for offset in range(len(values))]
        bars = axis.bar(positions, values, width=width * 0.9, color=["#9e9e9e", "#4c72b0", "#dd8452"])
        for bar, value in zip(bars, values):
            center = bar.get_x() + bar.get_width() / 2
            axis.annotate(f"{value:.1f}", (center, value), ha="center", va="bottom", fontsize=8)
        ingredients = [100 * ingredient["test_accuracy"] for ingredient in arm["ingredients"]]
        axis.scatter([positions[0]] * len(ingredients), ingredients, color="black", s=12, zorder=3)
    all_values = [100 * value(arm) for arm in arms for _, value in ROWS]
    all_values += [100 * ingredient["test_accuracy"] for arm in arms for ingredient in arm["ingredients"]]
    low = min(all_values)
    high = max(all_values)
    margin = max(1.0, (high - low) * 0.3)
    axis.set_ylim(max(0.0, math.floor(low - margin)), min(100.0, math.ceil(high + margin)))
    axis.set_xticks(range(len(arms)))
    axis.set_xticklabels(list(ARM_NAMES.values()))
    axis.set_ylabel("test accuracy (%)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=color) for color in ("#9e9e9e", "#4c72b0", "#dd8452")]
    handles.append(plt.Line2D([], [], marker="o", color="black", linestyle="", markersize=4))
    axis.legend(
        handles, [*bar_labels, "ingredients"], fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4
    )
    dataset = DATASET_NAMES.get(results["dataset"], results["dataset"])
    axis.set_title(f"Model soup, {dataset} / Diff_{results['vary']}", fontsize=10)
    figure.tight_layout()
    tmp_path = path + ".tmp.png"
    figure.savefig(tmp_path, dpi=120)
    plt.close(figure)
    os.replace(tmp_path, path)
