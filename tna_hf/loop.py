"""The accelerate training loop of the small LMC experiments, and the paper's protocol for model pairs.

Training uses the same exact masked update as `MaskedTrainer` (`tna_hf.update.MaskedUpdate`): after
every optimizer step the fixed entries are written back bit for bit. Defaults follow Appendix A.5 of
Li et al., "Training-time Neuron Alignment through Permutation Subspace for Improving Linear Mode
Connectivity and Model Fusion":

| domain | optimizer | learning rate | epochs |
| --- | --- | --- | --- |
| images | SGD, momentum 0.9, weight decay 5e-4 | 0.1 | 10 |
| polynomials | SGD, momentum 0.9, weight decay 5e-4 | 0.05 | 100 |
| text | Adam | 0.0005 | 20 |

The protocol of their Appendix A.3: the initial model is drawn with seed a and saved once; model 1
trains with seed a and model 2 with seed a + 1 (different batch orders), both from that saved
checkpoint and the same mask. `train_from_initial` runs it for n models (seeds a, ..., a + n - 1).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import load_initial_checkpoint, save_initial_checkpoint
from .config import TNAConfig
from .masks import Masks, build_masks, mask_fingerprint
from .metrics.evaluation import TASKS, clone_state_dict
from .update import MaskedUpdate

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")


@dataclass
class LoopConfig:
    """Settings of one training run of a small experiment model."""

    epochs: int = field(default=10, metadata={"help": "Passes over the training set."})
    batch_size: int = field(
        default=128, metadata={"help": "Examples per optimizer step (the paper does not state it; 128 here)."}
    )
    learning_rate: float = field(default=0.1, metadata={"help": "Constant learning rate."})
    optimizer: str = field(default="sgd", metadata={"help": "'sgd' (with momentum and weight decay) or 'adam'."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum."})
    weight_decay: float = field(default=5e-4, metadata={"help": "Coupled L2 weight decay of the optimizer."})
    max_grad_norm: Optional[float] = field(
        default=None, metadata={"help": "Clip the global gradient norm to this value; None disables clipping."}
    )
    task: str = field(default="classification", metadata={"help": "'classification' or 'regression' (MSE)."})

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"LoopConfig.epochs must be >= 1, got {self.epochs}.")
        if self.batch_size < 1:
            raise ValueError(f"LoopConfig.batch_size must be >= 1, got {self.batch_size}.")
        if not self.learning_rate > 0:
            raise ValueError(f"LoopConfig.learning_rate must be > 0, got {self.learning_rate}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"LoopConfig.optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}.")
        if self.task not in TASKS:
            raise ValueError(f"LoopConfig.task must be one of {list(TASKS)}, got {self.task!r}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"LoopConfig.max_grad_norm must be > 0 or None, got {self.max_grad_norm}.")

    def to_dict(self) -> dict:
        return asdict(self)


# NOTE: the paper gives only the learning rate (0.0005) for its text task. That rate suits Adam; plain
# SGD at 0.0005 barely moves an LSTM in 20 epochs, so text defaults to Adam.
DOMAIN_DEFAULTS = {
    "image": LoopConfig(),
    "polynomial": LoopConfig(epochs=100, learning_rate=0.05, batch_size=10, task="regression"),
    "text": LoopConfig(epochs=20, learning_rate=0.0005, optimizer="adam", weight_decay=0.0),
}


def default_loop_config(domain: str, **overrides) -> LoopConfig:
    """Return the Appendix A.5 settings of `domain` (`image`, `polynomial` or `text`) with `overrides` applied."""
    if domain not in DOMAIN_DEFAULTS:
        raise ValueError(f"domain must be one of {sorted(DOMAIN_DEFAULTS)}, got {domain!r}.")
    return replace(DOMAIN_DEFAULTS[domain], **overrides)


def build_optimizer(model: nn.Module, config: LoopConfig) -> torch.optim.Optimizer:
    """Build the optimizer `config` names over every trainable parameter of `model`."""
    params = [param for param in model.parameters() if param.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def _loss(outputs: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    if task == "classification":
        return nn.functional.cross_entropy(outputs, targets)
    return nn.functional.mse_loss(outputs.reshape(targets.shape), targets)


@dataclass
class TrainResult:
    """Result of one training run: the mean training loss of every epoch and the step count."""

    epoch_losses: list[float]
    steps: int
    mask_fingerprint: Optional[str]


def train_model(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    config: LoopConfig,
    seed: int,
    masks: Optional[Masks] = None,
    mode: str = "fix",
    accelerator=None,
    progress: bool = False,
    description: str = "train",
) -> TrainResult:
    """Train `model` in place on in-memory tensors with accelerate, keeping masked entries fixed.

    The batch order and any randomness inside the model follow only `seed`, so two runs with one
    seed are identical and runs with different seeds see different batch orders.

    Args:
        model: The model, already holding its initial weights.
        inputs: Training inputs, first dimension = examples.
        targets: Training labels (int64) or regression targets.
        config: Optimizer and schedule settings.
        seed: Seed of the batch order (the paper's a or a + 1).
        masks: TNA-PFN masks (`True` = trainable); None trains every entry (vanilla).
        mode: `"fix"` keeps fixed entries at their current value (TNA-PFN); `"prune"` zeroes them first.
        accelerator: An `accelerate.Accelerator`; a default one (CPU or the visible GPU) when None. Its
            `free_memory()` runs at the end, which also releases objects the caller prepared with it.
        progress: Show a tqdm bar over the epochs.
        description: Label of the progress bar.

    Returns:
        A `TrainResult`. Raises `RuntimeError` if a fixed entry moved (it never should).

    Example:

    ```python
    >>> masks = build_masks(model, TNAConfig(rho=0.4, seed=0))
    >>> train_model(model, images, labels, default_loop_config("image", epochs=1), seed=0, masks=masks)
    ```
    """
    from accelerate import Accelerator

    from .data.vision import make_loader

    accelerator = accelerator or Accelerator()
    torch.manual_seed(seed)
    loader = make_loader(inputs, targets, config.batch_size, shuffle=True, seed=seed)
    masked_update = MaskedUpdate(model, masks, mode=mode) if masks else None
    optimizer = build_optimizer(model, config)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if masked_update is not None:
        masked_update.attach(optimizer)

    model.train()
    epoch_losses = []
    steps = 0
    for _ in tqdm(range(config.epochs), desc=description, disable=not progress, leave=False):
        total, count = 0.0, 0
        for batch_inputs, batch_targets in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = _loss(model(batch_inputs), batch_targets, config.task)
            accelerator.backward(loss)
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            steps += 1
            total += float(loss.detach()) * batch_targets.shape[0]
            count += batch_targets.shape[0]
        epoch_losses.append(total / max(count, 1))

    fingerprint = None
    if masked_update is not None:
        changed = masked_update.verify()
        masked_update.detach()
        if changed:
            raise RuntimeError(f"Fixed entries moved during training in {changed}; please report this bug.")
        fingerprint = masked_update.fingerprint
    # The accelerator keeps every prepared object; release them so repeated runs do not accumulate.
    accelerator.free_memory()
    return TrainResult(epoch_losses=epoch_losses, steps=steps, mask_fingerprint=fingerprint)


@dataclass
class TrainedGroup:
    """Models trained from one saved initial checkpoint with one mask (the LMC protocol of Li et al., Appendix A.3).

    `state_dicts[i]` was trained with seed `seeds[i]`; `masks` is None for vanilla training.
    """

    initial_state: dict[str, torch.Tensor]
    init_fingerprint: str
    masks: Optional[Masks]
    seeds: list[int]
    state_dicts: list[dict[str, torch.Tensor]]
    results: list[TrainResult]


def train_from_initial(
    build: Callable[[], nn.Module],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    config: LoopConfig,
    seed: int,
    tna_config: Optional[TNAConfig] = None,
    num_models: int = 2,
    checkpoint_dir: Optional[str | os.PathLike] = None,
    accelerator=None,
    progress: bool = False,
) -> TrainedGroup:
    """Run the LMC protocol: one initial model from `seed`, then `num_models` runs from it.

    Steps: draw the initial model with `torch.manual_seed(seed)` and save it once (with the mask) via
    `tna_hf.checkpoint.save_initial_checkpoint`; build the mask from `tna_config` (seed, rho, mode,
    target patterns); then for i = 0..num_models-1 build a fresh model, load the saved checkpoint and
    train it with seed `seed + i`.

    Args:
        build: Returns a freshly initialized model (called under the seeds above).
        inputs: Training inputs.
        targets: Training targets.
        config: Training settings (`default_loop_config`).
        seed: The paper's a.
        tna_config: TNA-PFN settings; None or `rho == 0` means vanilla training. `mode="prune"` prunes.
        num_models: Models to train (2 for a barrier, 5 for the paper's multi-model fusion).
        checkpoint_dir: Where to save the initial checkpoint; a temporary folder when None.
        accelerator: Shared `accelerate.Accelerator`.
        progress: Show progress bars.

    Returns:
        A `TrainedGroup`.
    """
    if num_models < 1:
        raise ValueError(f"num_models must be >= 1, got {num_models}.")
    torch.manual_seed(seed)
    initial = build()
    use_masks = tna_config is not None and tna_config.rho > 0
    masks = build_masks(initial, tna_config) if use_masks else None
    mode = tna_config.mode if use_masks else "fix"

    with tempfile.TemporaryDirectory(prefix="tna_init_") as scratch:
        directory = os.fspath(checkpoint_dir) if checkpoint_dir is not None else scratch
        init_fingerprint = save_initial_checkpoint(initial, directory, tna_config=tna_config, masks=masks)
        state_dicts, results, seeds = [], [], []
        for index in range(num_models):
            run_seed = seed + index
            model = build()
            load_initial_checkpoint(model, directory)
            result = train_model(
                model,
                inputs,
                targets,
                config,
                seed=run_seed,
                masks=masks,
                mode=mode,
                accelerator=accelerator,
                progress=progress,
                description=f"model {index + 1}/{num_models} (seed {run_seed})",
            )
            state_dicts.append(clone_state_dict(_unwrapped(model)))
            results.append(result)
            seeds.append(run_seed)
    if masks is not None:
        logger.info("Trained %d models with mask %s", num_models, mask_fingerprint(masks)[:12])
    return TrainedGroup(
        initial_state=clone_state_dict(initial),
        init_fingerprint=init_fingerprint,
        masks=masks,
        seeds=seeds,
        state_dicts=state_dicts,
        results=results,
    )


def _unwrapped(model: nn.Module) -> nn.Module:
    from .masks import unwrap_model

    return unwrap_model(model)


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """Return the mean and the population standard deviation (ddof = 0) of `values`."""
    values = [float(value) for value in values]
    if not values:
        raise ValueError("summarize needs at least one value.")
    mean = sum(values) / len(values)
    return mean, (sum((value - mean) ** 2 for value in values) / len(values)) ** 0.5
