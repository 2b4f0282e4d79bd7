"""Linear mode connectivity experiments of TNA-PFN (Li et al., sections 3 and 4.1, Appendix C) on real data.

Every measurement follows the paper's protocol: an initial model drawn with seed a and saved once,
models trained from it with seeds a, a + 1, ... (different batch orders) and one mask, then the loss
and accuracy barriers on the test split over 11 alphas. Each experiment repeats this for every seed a
and reports mean +/- std:

| --experiment | reproduces |
| --- | --- |
| `rho_sweep` | Figure 2: TNA-PFN against pruning at initialization for rho 0.1 ... 0.9 |
| `depth_width` | Figure 3: accuracy barriers of MLPs over depth and width |
| `multi_model` | Table 3: uniform average of five models against their mean accuracy |
| `tasks` | Table 4: loss barriers of polynomial regression and LSTM sentiment analysis |
| `weight_matching` | Table 1: Git Re-Basin weight matching after vanilla training and after TNA-PFN |
| `layerwise` | Figure 5: TNA-PFN on the first, middle or last layer only |

Example:

```bash
tna lmc --config configs/lmc_rho_sweep.yaml
python -m tna_hf.experiments.lmc --experiment rho_sweep --models mlp_h2_w200 --epochs 1 --train_size 1000
```
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from tna_hf.config import TNAConfig
from tna_hf.data.vision import TensorData, load_tensor_data, make_loader
from tna_hf.loop import LoopConfig, default_loop_config, summarize, train_from_initial
from tna_hf.matching import permutation_spec_for, weight_matching
from tna_hf.metrics import evaluate_interpolation, multi_model_barrier
from tna_hf.models import build_model

from ._config_file import set_defaults_from_config_file
from .lmc_report import _write_json, format_table, save_plots

logger = logging.getLogger(__name__)

EXPERIMENTS = ("rho_sweep", "depth_width", "multi_model", "tasks", "weight_matching", "layerwise")
# ---------------------------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tna lmc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML file whose keys set any option below (command-line flags win).")
    parser.add_argument("--experiment", choices=EXPERIMENTS, default="rho_sweep", help="Which table or figure to run.")
    parser.add_argument(
        "--dataset", default="fashion_mnist", help="Image dataset (fashion_mnist, mnist5k, digits, mnist, cifar10)."
    )
    parser.add_argument(
        "--models", nargs="+", default=["mlp_h2_w200"], help="Model names, e.g. mlp_h2_w200 cnn resnet20."
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 10, 20], help="Values of the paper's seed a.")
    parser.add_argument("--rho", type=float, default=0.4, help="Mask ratio of TNA-PFN where one is used.")
    parser.add_argument(
        "--rhos",
        nargs="+",
        type=float,
        default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        help="rho_sweep: mask ratios.",
    )
    parser.add_argument(
        "--methods", nargs="+", default=["fix", "prune"], help="rho_sweep: 'fix' (TNA-PFN) and/or 'prune'."
    )
    parser.add_argument(
        "--depths", nargs="+", type=int, default=[1, 2, 4, 6], help="depth_width: hidden layers at width 200."
    )
    parser.add_argument(
        "--widths", nargs="+", type=int, default=[50, 100, 200, 400], help="depth_width: widths at depth 2."
    )
    parser.add_argument("--num_models", type=int, default=5, help="multi_model: models fused per seed.")
    parser.add_argument("--tasks", nargs="+", default=["poly2", "poly3", "rotten_tomatoes"], help="tasks: datasets.")
    parser.add_argument("--matching_iterations", type=int, default=100, help="weight_matching: max passes.")
    parser.add_argument("--epochs", type=int, default=10, help="Epochs on image datasets (paper: 10).")
    parser.add_argument("--poly_epochs", type=int, default=100, help="Epochs on the polynomial sets (paper: 100).")
    parser.add_argument("--text_epochs", type=int, default=20, help="Epochs on text (paper: 20).")
    parser.add_argument("--batch_size", type=int, default=128, help="Batch size on images.")
    parser.add_argument("--poly_batch_size", type=int, default=10, help="Batch size on the polynomial sets.")
    parser.add_argument("--text_batch_size", type=int, default=32, help="Batch size on text.")
    parser.add_argument(
        "--learning_rate", type=float, default=None, help="Override the image learning rate (paper: 0.1)."
    )
    parser.add_argument("--train_size", type=int, default=None, help="Class-balanced training subset (None: all).")
    parser.add_argument("--test_size", type=int, default=None, help="Class-balanced test subset (None: all).")
    parser.add_argument("--text_train_size", type=int, default=None, help="Training snippets for the LSTM (None: all).")
    parser.add_argument("--poly_width", type=int, default=100, help="Hidden units of the polynomial MLP.")
    parser.add_argument("--lstm_hidden", type=int, default=128, help="LSTM hidden size.")
    parser.add_argument("--max_length", type=int, default=48, help="Tokens per snippet for the LSTM.")
    parser.add_argument("--num_alphas", type=int, default=11, help="Points of the alpha grid from 0 to 1.")
    parser.add_argument("--output_dir", default="runs/lmc", help="Folder for results.json and the plots.")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads. 1 by default: on a CPU shared with other jobs, more threads spin and run slower.",
    )
    parser.add_argument("--no_progress", action="store_true", help="Hide the progress bars.")
    return parser


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Parse `argv`, with defaults taken from the YAML file named by `--config` when given."""
    parser = build_parser()
    set_defaults_from_config_file(parser, argv)
    args = parser.parse_args(argv)
    for method in args.methods:
        if method not in ("fix", "prune"):
            raise ValueError(f"--methods accepts 'fix' and 'prune', got {method!r}.")
    # Checked here, before any training: a rho of 0 or less would train vanilla models under a TNA-PFN label.
    for option, values in (("--rho", [args.rho]), ("--rhos", args.rhos)):
        for rho in values:
            if not 0.0 < rho < 1.0:
                parser.error(f"invalid {option} value {rho:g}: use a mask ratio with 0 < rho < 1 (e.g. 0.4).")
    return args


# ---------------------------------------------------------------------------------------------- measuring


class Runner:
    """Trains model groups by the LMC protocol and measures them; caches datasets across settings."""

    def __init__(self, args: argparse.Namespace):
        from accelerate import Accelerator

        self.args = args
        self.accelerator = Accelerator()
        self.datasets: dict[str, TensorData] = {}
        self.curves: dict[str, Any] = {}

    def data(self, name: str) -> TensorData:
        if name not in self.datasets:
            args = self.args
            train_size = args.text_train_size if name == "rotten_tomatoes" else args.train_size
            self.datasets[name] = load_tensor_data(
                name, train_size=train_size, test_size=args.test_size, max_length=args.max_length
            )
            data = self.datasets[name]
            logger.info("Loaded %s: %d train, %d test examples", name, data.num_train, data.num_test)
        return self.datasets[name]

    def loop_config(self, data: TensorData) -> LoopConfig:
        args = self.args
        if data.task == "regression":
            return default_loop_config("polynomial", epochs=args.poly_epochs, batch_size=args.poly_batch_size)
        if data.vocab_size is not None:
            return default_loop_config("text", epochs=args.text_epochs, batch_size=args.text_batch_size)
        overrides = {"epochs": args.epochs, "batch_size": args.batch_size}
        if args.learning_rate is not None:
            overrides["learning_rate"] = args.learning_rate
        return default_loop_config("image", **overrides)

    def builder(self, model_name: str, data: TensorData) -> Callable[[], torch.nn.Module]:
        if data.task == "regression":
            return lambda: build_model(f"poly_mlp_w{self.args.poly_width}")
        if data.vocab_size is not None:
            return lambda: build_model("lstm", vocab_size=data.vocab_size, hidden_size=self.args.lstm_hidden)
        return lambda: build_model(model_name, in_shape=data.in_shape, num_classes=data.num_classes)

    def measure(
        self,
        label: str,
        dataset: str,
        model_name: str,
        rho: float = 0.0,
        mode: str = "fix",
        target_patterns: Optional[list[str]] = None,
        num_models: int = 2,
        matching: bool = False,
        progress: Optional[tqdm] = None,
    ) -> dict[str, dict]:
        """Run every seed of one setting; return metric name -> {"mean", "std", "values"}."""
        args = self.args
        data = self.data(dataset)
        build = self.builder(model_name, data)
        config = self.loop_config(data)
        test_loader = make_loader(data.test_inputs, data.test_targets, batch_size=1000)
        alphas = [index / (args.num_alphas - 1) for index in range(args.num_alphas)]
        per_seed: dict[str, list[float]] = {}

        for seed in args.seeds:
            tna_config = TNAConfig(rho=rho, seed=seed, mode=mode, target_patterns=target_patterns) if rho > 0 else None
            group = train_from_initial(
                build,
                data.train_inputs,
                data.train_targets,
                config,
                seed=seed,
                tna_config=tna_config,
                num_models=num_models,
                accelerator=self.accelerator,
                progress=not args.no_progress,
            )
            evaluator = build()
            if num_models > 2:
                metrics = self._fusion_metrics(evaluator, group.state_dicts, test_loader, data.task)
            else:
                metrics = self._pair_metrics(evaluator, group.state_dicts, test_loader, alphas, data.task, label, seed)
            if matching:
                metrics.update(self._matching_metrics(evaluator, group.state_dicts, test_loader, alphas, label, seed))
            for name, value in metrics.items():
                per_seed.setdefault(name, []).append(value)
            if progress is not None:
                progress.update(1)

        summary = {}
        for name, values in per_seed.items():
            mean, std = summarize(values)
            summary[name] = {"mean": mean, "std": std, "values": values}
        return summary

    def _pair_metrics(self, evaluator, state_dicts, loader, alphas, task, label, seed) -> dict[str, float]:
        curve = evaluate_interpolation(evaluator, state_dicts[0], state_dicts[1], loader, alphas=alphas, task=task)
        self.curves.setdefault(label, {})[seed] = curve
        metrics = {"loss_barrier": curve.loss_barrier}
        if task == "classification":
            metrics.update(
                average_accuracy=curve.average_accuracy,
                interpolated_accuracy=curve.value_at(0.5),
                accuracy_barrier=curve.accuracy_barrier,
            )
        return metrics

    @staticmethod
    def _fusion_metrics(evaluator, state_dicts, loader, task) -> dict[str, float]:
        result = multi_model_barrier(evaluator, state_dicts, loader, task=task)
        metrics = {"loss_barrier": result.loss_barrier}
        if task == "classification":
            metrics.update(
                average_accuracy=result.average_accuracy,
                interpolated_accuracy=result.fused_accuracy,
                accuracy_barrier=result.accuracy_barrier,
            )
        return metrics

    def _matching_metrics(self, evaluator, state_dicts, loader, alphas, label, seed) -> dict[str, float]:
        spec = permutation_spec_for(evaluator)
        result = weight_matching(
            state_dicts[0], state_dicts[1], spec, max_iterations=self.args.matching_iterations, seed=seed
        )
        curve = evaluate_interpolation(evaluator, state_dicts[0], result.aligned_state_dict, loader, alphas=alphas)
        self.curves.setdefault(f"{label} + WM", {})[seed] = curve
        return {
            "matched_interpolated_accuracy": curve.value_at(0.5),
            "matched_accuracy_barrier": curve.accuracy_barrier,
            "matching_iterations": float(result.iterations),
        }


# ---------------------------------------------------------------------------------------------- experiments


def _runs(settings: int, seeds: Sequence[int]) -> int:
    return settings * len(seeds)


def run_rho_sweep(runner: Runner, progress: tqdm) -> list[dict]:
    args = runner.args
    rows = []
    for model_name in args.models:
        rows.append(
            {
                "model": model_name,
                "method": "vanilla",
                "rho": 0.0,
                "metrics": runner.measure(f"{model_name} vanilla", args.dataset, model_name, progress=progress),
            }
        )
        for method in args.methods:
            for rho in args.rhos:
                label = f"{model_name} {'TNA-PFN' if method == 'fix' else 'prune'} rho={rho:g}"
                metrics = runner.measure(label, args.dataset, model_name, rho=rho, mode=method, progress=progress)
                rows.append(
                    {
                        "model": model_name,
                        "method": "TNA-PFN" if method == "fix" else "prune",
                        "rho": rho,
                        "metrics": metrics,
                    }
                )
    return rows


def run_depth_width(runner: Runner, progress: tqdm) -> list[dict]:
    args = runner.args
    shapes = sorted({(depth, 200) for depth in args.depths} | {(2, width) for width in args.widths})
    rows = []
    for depth, width in shapes:
        model_name = f"mlp_h{depth}_w{width}"
        for method, rho in (("vanilla", 0.0), ("TNA-PFN", args.rho)):
            metrics = runner.measure(f"{model_name} {method}", args.dataset, model_name, rho=rho, progress=progress)
            rows.append(
                {"model": model_name, "depth": depth, "width": width, "method": method, "rho": rho, "metrics": metrics}
            )
    return rows


def run_multi_model(runner: Runner, progress: tqdm) -> list[dict]:
    args = runner.args
    rows = []
    for model_name in args.models:
        for method, rho in (("vanilla", 0.0), ("TNA-PFN", args.rho)):
            metrics = runner.measure(
                f"{model_name} {method}",
                args.dataset,
                model_name,
                rho=rho,
                num_models=args.num_models,
                progress=progress,
            )
            rows.append(
                {"model": model_name, "method": method, "rho": rho, "num_models": args.num_models, "metrics": metrics}
            )
    return rows


def run_tasks(runner: Runner, progress: tqdm) -> list[dict]:
    args = runner.args
    rows = []
    for task in args.tasks:
        model_name = "lstm" if task == "rotten_tomatoes" else f"poly_mlp_w{args.poly_width}"
        for method, rho in (("vanilla", 0.0), ("TNA-PFN", args.rho)):
            metrics = runner.measure(f"{task} {method}", task, model_name, rho=rho, progress=progress)
            rows.append({"dataset": task, "model": model_name, "method": method, "rho": rho, "metrics": metrics})
    return rows


def run_weight_matching(runner: Runner, progress: tqdm) -> list[dict]:
    args = runner.args
    rows = []
    for model_name in args.models:
        for method, rho in (("vanilla", 0.0), ("TNA-PFN", args.rho)):
            metrics = runner.measure(
                f"{model_name} {method}", args.dataset, model_name, rho=rho, matching=True, progress=progress
            )
            rows.append({"model": model_name, "method": method, "rho": rho, "metrics": metrics})
    return rows


def layer_patterns(model_name: str) -> dict[str, Optional[list[str]]]:
    """Return the target patterns of Figure 5's variants: first, middle and last layer, and all layers.

    MLP: the first hidden layer, the middle hidden layer and the head. Simple CNN: conv1, conv3
    (the 64-to-64 convolution) and fc2. ResNet: the stem convolution, the middle stage and the head.
    """
    if model_name.startswith("mlp_h"):
        depth = int(model_name.split("_")[1][1:])
        first, middle, last = r"^hidden\.0\.", rf"^hidden\.{depth // 2}\.", r"^head\."
    elif model_name in ("cnn", "simple_cnn"):
        first, middle, last = r"^conv1\.", r"^conv3\.", r"^fc2\."
    elif model_name.startswith(("resnet", "wrn")):
        first, middle, last = r"^stem\.", r"^stages\.1\.", r"^head\."
    else:
        raise ValueError(f"No layer-wise patterns for model {model_name!r}; use an MLP, cnn or a ResNet.")
    return {"first": [first], "middle": [middle], "last": [last], "all": None}


def run_layerwise(runner: Runner, progress: tqdm) -> list[dict]:
    args = runner.args
    rows = []
    for model_name in args.models:
        rows.append(
            {
                "model": model_name,
                "variant": "vanilla",
                "rho": 0.0,
                "metrics": runner.measure(f"{model_name} vanilla", args.dataset, model_name, progress=progress),
            }
        )
        for variant, patterns in layer_patterns(model_name).items():
            metrics = runner.measure(
                f"{model_name} {variant}",
                args.dataset,
                model_name,
                rho=args.rho,
                target_patterns=patterns,
                progress=progress,
            )
            rows.append(
                {"model": model_name, "variant": variant, "rho": args.rho, "patterns": patterns, "metrics": metrics}
            )
    return rows


def _count_settings(args: argparse.Namespace) -> int:
    if args.experiment == "rho_sweep":
        return len(args.models) * (1 + len(args.methods) * len(args.rhos))
    if args.experiment == "depth_width":
        return 2 * len({(d, 200) for d in args.depths} | {(2, w) for w in args.widths})
    if args.experiment == "tasks":
        return 2 * len(args.tasks)
    if args.experiment == "layerwise":
        return 5 * len(args.models)
    return 2 * len(args.models)


EXPERIMENT_FUNCTIONS = {
    "rho_sweep": run_rho_sweep,
    "depth_width": run_depth_width,
    "multi_model": run_multi_model,
    "tasks": run_tasks,
    "weight_matching": run_weight_matching,
    "layerwise": run_layerwise,
}


def main(argv: Optional[list[str]] = None) -> dict:
    """Run one LMC experiment, print its table (mean ± std over seeds) and save results.json and plots.

    Returns:
        `{"experiment", "args", "rows", "table", "plots", "wall_time_s"}`; each row contains its setting and
        `metrics[name] = {"mean", "std", "values"}` (accuracies as fractions).
    """
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    runner = Runner(args)
    total = _runs(_count_settings(args), args.seeds)
    with tqdm(total=total, desc=f"lmc {args.experiment}", disable=args.no_progress) as progress:
        rows = EXPERIMENT_FUNCTIONS[args.experiment](runner, progress)

    table = format_table(rows)
    wall_time = time.perf_counter() - start
    if not runner.accelerator.is_main_process:
        # Under `accelerate launch` with several processes every process measures the same numbers.
        return {
            "experiment": args.experiment,
            "args": vars(args),
            "rows": rows,
            "table": table,
            "plots": [],
            "wall_time_s": wall_time,
        }
    os.makedirs(args.output_dir, exist_ok=True)
    plots = save_plots(args, runner.curves, rows, args.output_dir)
    results = {
        "experiment": args.experiment,
        "args": vars(args),
        "rows": rows,
        "table": table,
        "plots": plots,
        "wall_time_s": wall_time,
        "curves": {
            label: {str(seed): curve.to_dict() for seed, curve in by_seed.items()}
            for label, by_seed in runner.curves.items()
        },
    }
    _write_json(results, os.path.join(args.output_dir, "results.json"))
    data_names = ", ".join(args.tasks) if args.experiment == "tasks" else args.dataset
    heading = f"{args.experiment} on {data_names} (mean ± std over seeds a = {args.seeds}), {wall_time:.0f} s"
    print(f"\n{heading}")  # noqa: T201
    print(table)  # noqa: T201
    return results


if __name__ == "__main__":
    main()
