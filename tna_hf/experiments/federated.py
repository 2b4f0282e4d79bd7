"""Federated learning experiments of the TNA-PFN paper (Li et al.): FedAvg, FedProx, FedPFN, FedPNU and ablations.

Runs a grid of federated simulations on Fashion-MNIST: models x Dirichlet alpha x number of clients x
selection ratio x seeds x algorithms x mask ratios. It prints the mean and standard deviation over seeds
of the reported accuracy (mean test accuracy of the last 5 rounds) and draws learning curves.

Every algorithm of one (model, seed) starts from one saved initial checkpoint, and every algorithm of
one (clients, ratio, rounds, seed) trains the same clients in the same rounds. Finished runs are stored
as JSON and skipped when the command is repeated.

Example:

```bash
tna fed --config configs/fed_fmnist_table5.yaml --output_dir runs/fed
python -m tna_hf.experiments.federated --models mlp_h2_w200 --rounds 3 --max_train_samples 2000
```
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import time
from collections import defaultdict
from typing import Optional

import numpy as np
import torch

from ..checkpoint import ensure_initial_checkpoint
from ..federated.algorithms import get_algorithm
from ..federated.data import load_federated_data
from ..federated.partitions import dirichlet_partition, load_or_create_participation
from ..federated.simulation import FederatedConfig, FederatedSimulation
from ..models import build_model
from ._config_file import set_defaults_from_config_file

logger = logging.getLogger(__name__)

_LIST_ARGUMENTS = {
    "models": str,
    "algorithms": str,
    "dirichlet_alphas": float,
    "num_clients": int,
    "selection_ratios": float,
    "seeds": int,
    "rhos": float,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tna fed", description="Federated learning with FedPFN / FedPNU and baselines on Fashion-MNIST."
    )
    parser.add_argument("--config", default=None, help="YAML file whose keys set the defaults of these options.")
    parser.add_argument("--output_dir", default="outputs/federated", help="Folder for runs, checkpoints and plots.")
    parser.add_argument("--dataset", default="fashion_mnist", help="Dataset name (only fashion_mnist works offline).")
    parser.add_argument("--models", nargs="+", default=["mlp_h2_w200"], help="Model names, e.g. mlp_h2_w200 lenet5.")
    parser.add_argument(
        "--algorithms",
        nargs="+",
        default=["fedavg", "fedpfn", "fedpnu"],
        help="Client algorithms: fedavg fedprox fedpfn fedpnu fedpfn_fixed fedpruning.",
    )
    parser.add_argument("--dirichlet_alphas", nargs="+", default=[0.5], help="Dirichlet concentrations (dir).")
    parser.add_argument("--num_clients", nargs="+", default=[20], help="Numbers of clients n.")
    parser.add_argument("--selection_ratios", nargs="+", default=[1.0], help="Fractions of clients per round.")
    parser.add_argument("--seeds", nargs="+", default=[0], help="Seeds (one run per seed).")
    parser.add_argument("--rhos", nargs="+", default=[0.4], help="Mask ratios of the masked algorithms.")
    parser.add_argument("--rounds", type=int, default=20, help="Communication rounds T (the paper: 100).")
    parser.add_argument("--local_epochs", type=int, default=2, help="Local epochs E (the paper: 5 in Table 5).")
    parser.add_argument("--batch_size", type=int, default=64, help="Local mini-batch size.")
    parser.add_argument("--lr", type=float, default=0.08, help="Local learning rate of round 0.")
    parser.add_argument("--lr_decay", type=float, default=0.99, help="Learning-rate factor per round.")
    parser.add_argument("--momentum", type=float, default=0.9, help="Local SGD momentum.")
    parser.add_argument("--weight_decay", type=float, default=5e-4, help="Local SGD weight decay.")
    parser.add_argument("--prox_mu", type=float, default=0.001, help="FedProx mu.")
    parser.add_argument("--min_partition_size", type=int, default=10, help="Smallest client partition.")
    parser.add_argument(
        "--max_train_samples", type=int, default=6000, help="Subsample the training set to this size (0: all)."
    )
    parser.add_argument(
        "--max_test_samples", type=int, default=2000, help="Subsample the test set to this size (0: all)."
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs.")
    parser.add_argument("--no_plot", action="store_true", help="Skip the learning-curve plots.")
    parser.add_argument("--no_progress", action="store_true", help="Hide the progress bars.")
    return parser


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parse the command line; a `--config` YAML file sets defaults that explicit options override."""
    parser = build_parser()
    set_defaults_from_config_file(parser, argv)
    args = parser.parse_args(argv)
    for name, kind in _LIST_ARGUMENTS.items():
        value = getattr(args, name)
        values = value if isinstance(value, (list, tuple)) else [value]
        setattr(args, name, [kind(item) for item in values])
    for name in args.algorithms:
        get_algorithm(name)
    # Checked here, before any run: a rho of 0 trains FedAvg under a masked algorithm's label.
    masked = [name for name in args.algorithms if get_algorithm(name).is_masked]
    if masked:
        for rho in args.rhos:
            if not 0.0 < rho < 1.0:
                parser.error(
                    f"invalid --rhos value {rho:g} for the masked algorithms {', '.join(masked)}: "
                    "use a mask ratio with 0 < rho < 1 (e.g. 0.4)."
                )
    # 0 or null in a config file means the whole split.
    args.max_train_samples = args.max_train_samples or None
    args.max_test_samples = args.max_test_samples or None
    return args


def _run_name(model: str, alpha: float, clients: int, ratio: float, algorithm: str, rho: float, seed: int) -> str:
    return f"{model}_dir{alpha:g}_n{clients}_sel{ratio:g}_{algorithm}_rho{rho:g}_seed{seed}"


def _grid(args: argparse.Namespace):
    """Yield (model, alpha, clients, ratio, seed, algorithm, rho); unmasked algorithms get rho 0 once."""
    for model, alpha, clients, ratio, seed in itertools.product(
        args.models, args.dirichlet_alphas, args.num_clients, args.selection_ratios, args.seeds
    ):
        for algorithm in args.algorithms:
            rhos = args.rhos if get_algorithm(algorithm).is_masked else [0.0]
            for rho in rhos:
                yield model, alpha, clients, ratio, seed, algorithm, rho


def _load_finished(path: str, expected: dict) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        record = json.load(handle)
    if record.get("settings") != expected:
        logger.warning("Rerunning %s: it was made with other settings.", path)
        return None
    return record


def _write_json(payload: dict, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp_path = path + ".tmp"
    with open(tmp_path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.replace(tmp_path, path)


def run_one(args: argparse.Namespace, cell: tuple, data_cache: dict, device: torch.device) -> dict:
    """Run (or reload) one federated run of the grid and return its record."""
    model_name, alpha, clients, ratio, seed, algorithm, rho = cell
    settings = {
        "model": model_name,
        "dirichlet_alpha": alpha,
        "num_clients": clients,
        "selection_ratio": ratio,
        "seed": seed,
        "algorithm": algorithm,
        "rho": rho,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_decay": args.lr_decay,
        "prox_mu": args.prox_mu,
        "max_train_samples": args.max_train_samples,
        "max_test_samples": args.max_test_samples,
        "min_partition_size": args.min_partition_size,
    }
    path = os.path.join(
        args.output_dir, "runs", _run_name(model_name, alpha, clients, ratio, algorithm, rho, seed) + ".json"
    )
    finished = _load_finished(path, settings)
    if finished is not None:
        return finished

    # Data, partitions and participation are shared by every algorithm of one seed.
    data_key = (seed, args.max_train_samples, args.max_test_samples)
    if data_key not in data_cache:
        data_cache.clear()
        data_cache[data_key] = load_federated_data(
            args.dataset, args.max_train_samples, args.max_test_samples, seed=seed, device=device
        )
    data = data_cache[data_key]
    partitions = dirichlet_partition(data.train_labels.cpu(), clients, alpha, seed, args.min_partition_size)
    participation_path = os.path.join(
        args.output_dir, "participation", f"n{clients}_sel{ratio:g}_T{args.rounds}_seed{seed}.json"
    )
    participation = load_or_create_participation(participation_path, clients, args.rounds, ratio, seed)

    # One saved initial model per (model, seed), shared by every algorithm.
    torch.manual_seed(seed)
    model = build_model(model_name, in_shape=data.in_shape, num_classes=data.num_classes)
    ensure_initial_checkpoint(model, os.path.join(args.output_dir, "init", f"{model_name}_seed{seed}"))
    model.to(device)

    config = FederatedConfig(
        algorithm=algorithm,
        rounds=args.rounds,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        lr_decay=args.lr_decay,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        prox_mu=args.prox_mu,
        rho=rho,
        seed=seed,
    )
    simulation = FederatedSimulation(
        config,
        model,
        data.train_inputs,
        data.train_labels,
        partitions,
        participation,
        data.test_inputs,
        data.test_labels,
    )
    label = f"{model_name} dir={alpha:g} n={clients} sel={ratio:g} {algorithm} rho={rho:g} seed={seed}"
    result = simulation.run(progress=not args.no_progress, description=label)
    record = {
        "settings": settings,
        "final_accuracy": result.final_accuracy,
        "test_accuracy": result.test_accuracy,
        "test_loss": result.test_loss,
        "wall_time_s": result.wall_time_s,
        "partition_sizes": [int(len(part)) for part in partitions],
    }
    _write_json(record, path)
    logger.info("%s: final accuracy %.4f in %.1f s", label, result.final_accuracy, result.wall_time_s)
    return record


def summarize(records: list[dict]) -> list[dict]:
    """Group runs by everything but the seed; return mean and sample std (ddof=1) of the final accuracy."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        s = record["settings"]
        key = (s["model"], s["dirichlet_alpha"], s["num_clients"], s["selection_ratio"], s["algorithm"], s["rho"])
        groups[key].append(record)
    rows = []
    for key, members in groups.items():
        accuracies = np.array([member["final_accuracy"] for member in members]) * 100
        rows.append(
            {
                "model": key[0],
                "dirichlet_alpha": key[1],
                "num_clients": key[2],
                "selection_ratio": key[3],
                "algorithm": key[4],
                "rho": key[5],
                "seeds": len(members),
                "accuracy_mean": float(accuracies.mean()),
                "accuracy_std": float(accuracies.std(ddof=1)) if len(members) > 1 else 0.0,
                "wall_time_s": float(sum(member["wall_time_s"] for member in members)),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """Format summary rows as a Markdown table (accuracy in %, mean ± std over seeds)."""
    lines = [
        "| model | dir | clients | selection | algorithm | rho | seeds | accuracy (%) | wall time (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        label = get_algorithm(row["algorithm"]).label
        lines.append(
            f"| {row['model']} | {row['dirichlet_alpha']:g} | {row['num_clients']} | {row['selection_ratio']:g} "
            f"| {label} | {row['rho']:g} | {row['seeds']} | {row['accuracy_mean']:.1f} ± {row['accuracy_std']:.1f} "
            f"| {row['wall_time_s']:.0f} |"
        )
    return "\n".join(lines)


def plot_learning_curves(records: list[dict], output_dir: str) -> list[str]:
    """Plot the mean test accuracy per round of every algorithm, one figure per setting; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures: dict[tuple, dict[tuple, list[list[float]]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        s = record["settings"]
        figure_key = (s["model"], s["dirichlet_alpha"], s["num_clients"], s["selection_ratio"])
        figures[figure_key][(s["algorithm"], s["rho"])].append(record["test_accuracy"])
    paths = []
    os.makedirs(os.path.join(output_dir, "plots"), exist_ok=True)
    for (model, alpha, clients, ratio), curves in figures.items():
        figure, axis = plt.subplots(figsize=(6, 4))
        for (algorithm, rho), runs in sorted(curves.items()):
            length = min(len(run) for run in runs)
            mean = np.mean([run[:length] for run in runs], axis=0) * 100
            label = get_algorithm(algorithm).label + (f" (rho={rho:g})" if rho else "")
            axis.plot(np.arange(1, length + 1), mean, label=label)
        axis.set_xlabel("round")
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(f"{model}, dir={alpha:g}, {clients} clients, selection {ratio:g}")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
        path = os.path.join(output_dir, "plots", f"{model}_dir{alpha:g}_n{clients}_sel{ratio:g}.png")
        figure.tight_layout()
        figure.savefig(path + ".tmp.png", dpi=120)
        plt.close(figure)
        os.replace(path + ".tmp.png", path)
        paths.append(path)
    return paths


def main(argv: Optional[list[str]] = None) -> dict:
    """Run the federated grid given on the command line; print the table and return the results.

    Returns:
        A dict with `runs` (one record per run), `table` (mean and std per setting), `plots` (paths)
        and `wall_time_s`.
    """
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from accelerate import PartialState

    state = PartialState()
    if state.num_processes > 1 and not state.is_main_process:
        # The simulation runs every client in one process, so extra launched processes have nothing to do.
        logger.warning(
            "Process %d of %d is idle: run `tna fed` with one process.", state.process_index, state.num_processes
        )
        return {"runs": [], "table": [], "plots": [], "wall_time_s": 0.0}
    device = state.device
    start = time.perf_counter()
    data_cache: dict = {}
    records = [run_one(args, cell, data_cache, device) for cell in _grid(args)]
    rows = summarize(records)
    table = format_table(rows)
    print(table)  # noqa: T201 (experiment drivers print their table)
    plots = [] if args.no_plot else plot_learning_curves(records, args.output_dir)
    results = {"runs": records, "table": rows, "plots": plots, "wall_time_s": time.perf_counter() - start}
    _write_json({"table": rows, "wall_time_s": results["wall_time_s"]}, os.path.join(args.output_dir, "summary.json"))
    return results


if __name__ == "__main__":
    main()
