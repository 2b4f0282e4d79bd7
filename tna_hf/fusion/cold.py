"""ColD fusion rounds with TNA-PFN masks (Don-Yehiya et al., 2023; Li et al., TNA-PFN, Table 9).

ColD fusion ("Collaborative Descent") improves a pretrained model by repeated fusion. A shared base
body starts from the pretrained weights. Each contributor owns one task dataset and one classification
head. In every round each contributor loads the current base body under its own head, fine-tunes
the model on its task with `MaskedTrainer`, and returns its body. The new base is the weighted average
of those bodies. Heads are never averaged: each stays with its contributor across rounds and only
that contributor's training changes it.

The four variants of the TNA-PFN paper differ only in the mask schedule of local training:

| variant | rho | mask schedule |
| --- | --- | --- |
| `fedavg` | 0 | none (plain ColD fusion) |
| `fedavg_tna_pfn` | rho | one mask for every round (`fixed`) |
| `fedpfn` | rho | a new mask each round (`per_round`) |
| `fedpnu` | rho | a new mask each round, its complement from the middle of local training on (`progressive`) |

Only the body is masked: the masks are the same for every contributor whatever its number of classes.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from transformers import TrainerCallback, TrainingArguments

from ..checkpoint import state_dict_fingerprint
from ..config import MaskSchedule, TNAConfig
from ..masks import Masks, complement_masks, mask_fingerprint, save_masks
from ..models.text import get_body_prefix, get_body_state_dict, get_head_state_dict, set_body_state_dict
from ..trainer import MaskedTrainer
from .soup import average_state_dicts

logger = logging.getLogger(__name__)

ROUND_INFO_NAME = "cold_fusion_round.json"


class ColdFusionVariant(str, enum.Enum):
    """The ColD fusion variants of the TNA-PFN paper's Table 9."""

    FEDAVG = "fedavg"
    FEDAVG_TNA_PFN = "fedavg_tna_pfn"
    FEDPFN = "fedpfn"
    FEDPNU = "fedpnu"


VARIANT_LABELS = {
    ColdFusionVariant.FEDAVG.value: "FedAvg",
    ColdFusionVariant.FEDAVG_TNA_PFN.value: "FedAvg+TNA-PFN",
    ColdFusionVariant.FEDPFN.value: "FedPFN",
    ColdFusionVariant.FEDPNU.value: "FedPNU",
}

_VARIANT_SCHEDULES = {
    ColdFusionVariant.FEDAVG_TNA_PFN.value: MaskSchedule.FIXED.value,
    ColdFusionVariant.FEDPFN.value: MaskSchedule.PER_ROUND.value,
    ColdFusionVariant.FEDPNU.value: MaskSchedule.PROGRESSIVE.value,
}


class Weighting(str, enum.Enum):
    """Weighting of the contributors' bodies in the average."""

    UNIFORM = "uniform"
    NUM_SAMPLES = "num_samples"


def parse_variant(value: str | ColdFusionVariant) -> str:
    """Return the variant's string value, or raise listing the valid variants."""
    try:
        return ColdFusionVariant(value).value
    except ValueError:
        choices = [variant.value for variant in ColdFusionVariant]
        raise ValueError(f"Unknown ColD fusion variant {value!r}; choose one of {choices}.") from None


def variant_tna_config(variant: str, rho: float = 0.4, seed: int = 0, body_prefix: str = "bert.") -> TNAConfig:
    """Return the `TNAConfig` of a variant: rho 0 for FedAvg, else `rho` with the variant's schedule, body only.

    Args:
        variant: One of `ColdFusionVariant`.
        rho: Mask ratio of the TNA variants (the paper's default is 0.4).
        seed: Mask seed, shared by all contributors.
        body_prefix: State-dict prefix of the body (`get_body_prefix(model)`); only names under it are masked.

    Raises:
        ValueError: Unknown variant, or rho is 0 for a TNA variant.
    """
    variant = parse_variant(variant)
    patterns = ["^" + re.escape(body_prefix)]
    if variant == ColdFusionVariant.FEDAVG.value:
        return TNAConfig(rho=0.0, seed=seed, target_patterns=patterns)
    if rho <= 0:
        raise ValueError(f"Variant {variant!r} needs rho > 0 (got {rho}); use 'fedavg' for unmasked training.")
    return TNAConfig(rho=rho, seed=seed, target_patterns=patterns, schedule=_VARIANT_SCHEDULES[variant])


@dataclass
class Contributor:
    """One ColD fusion participant: a task, its training data and its model (shared body + own head).

    Attributes:
        name: Task name, used in logs, output folders and results.
        model: A sequence classification model; its body is overwritten with the base every round.
        train_dataset: Tokenized training examples for `MaskedTrainer`.
        data_collator: Batches examples (e.g. `DataCollatorWithPadding`); None uses the Trainer default.
    """

    name: str
    model: torch.nn.Module
    train_dataset: Any
    data_collator: Optional[Callable] = None

    @property
    def num_samples(self) -> int:
        return len(self.train_dataset)


@dataclass
class MaskRecord:
    """The mask in force during one optimizer step of one contributor's local training."""

    round_index: int
    contributor: str
    step: int
    fingerprint: Optional[str]


@dataclass
class RoundResult:
    """Outcome of one ColD fusion round."""

    round_index: int
    weights: list[float]
    base_fingerprint: str
    training_losses: dict[str, float]
    mask_fingerprints: dict[str, Optional[str]]
    complement_fingerprints: dict[str, Optional[str]] = field(default_factory=dict)


class _MaskScheduleCallback(TrainerCallback):
    """Records the mask of every optimizer step and, for FedPNU, switches to the complement at `switch_step`."""

    def __init__(self, round_index: int, contributor: str, switch_step: Optional[int], records: list[MaskRecord]):
        self.round_index = round_index
        self.contributor = contributor
        self.switch_step = switch_step
        self.records = records
        self.trainer: Optional[MaskedTrainer] = None
        self.complement_fingerprint: Optional[str] = None

    def on_step_end(self, args, state, control, **kwargs):
        update = self.trainer.masked_update if self.trainer is not None else None
        fingerprint = update.fingerprint if update is not None else None
        self.records.append(MaskRecord(self.round_index, self.contributor, state.global_step, fingerprint))
        if update is not None and self.switch_step is not None and state.global_step == self.switch_step:
            # set_masks snapshots the current values of the newly fixed entries, so the entries trained so far
            # stay where the first half left them, whatever optimizer state they gathered.
            complement = complement_masks(update.masks)
            update.set_masks(complement, mode=self.trainer.tna_config.mode)
            self.trainer.masks = complement
            self.trainer.mask_fingerprint = update.fingerprint
            self.complement_fingerprint = update.fingerprint
            logger.info(
                "Round %d, %s: switched to the complement mask after step %d (mask %s).",
                self.round_index,
                self.contributor,
                state.global_step,
                update.fingerprint[:12],
            )
        return control


def get_aggregation_weights(contributors: Sequence[Contributor], weighting: str) -> list[float]:
    """Return one weight per contributor, summing to 1: equal, or proportional to the training set size.

    Raises:
        ValueError: Unknown `weighting`, or every contributor has an empty training set.
    """
    try:
        weighting = Weighting(weighting).value
    except ValueError:
        raise ValueError(
            f"Unknown weighting {weighting!r}; choose one of {[member.value for member in Weighting]}."
        ) from None
    if weighting == Weighting.UNIFORM.value:
        return [1.0 / len(contributors)] * len(contributors)
    counts = [contributor.num_samples for contributor in contributors]
    total = sum(counts)
    if total == 0:
        raise ValueError("Cannot weight contributors by sample count: every training set is empty.")
    return [count / total for count in counts]


def average_bodies(bodies: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Average contributors' body state dicts with `weights` (float64 accumulation, cast back).

    Raises:
        ValueError: Names or shapes differ between bodies, or an integer buffer differs.
    """
    return average_state_dicts(list(bodies), weights=list(weights))


class ColdFusion:
    """Runs ColD fusion rounds over contributors that share a body and keep their own heads.

    Args:
        contributors: At least one contributor; all models must have the same body (names and shapes).
        tna_config: The variant's config (`variant_tna_config`); rho 0 trains without masks.
        training_args: Template for each local training. `max_steps` must be set: it is the number of local
            steps per round. Each round and contributor gets its own `output_dir` subfolder and seed offset,
            so their batches differ.
        weighting: `"uniform"` or `"num_samples"`.
        initial_body: The shared initial checkpoint of the body; by default the first contributor's body.
        callbacks: Extra `TrainerCallback`s for every local training.

    Raises:
        ValueError: No contributors, `max_steps` not positive, or the bodies do not fit each other.

    Example:

    ```python
    >>> fusion = ColdFusion(contributors, variant_tna_config("fedpfn", body_prefix="bert."), args)
    >>> for round_index in range(3):
    ...     result = fusion.run_round(round_index)
    >>> fusion.base_body  # the fused body after the last round
    ```
    """

    def __init__(
        self,
        contributors: Sequence[Contributor],
        tna_config: TNAConfig,
        training_args: TrainingArguments,
        weighting: str = Weighting.UNIFORM.value,
        initial_body: Optional[Mapping[str, torch.Tensor]] = None,
        callbacks: Optional[Sequence[TrainerCallback]] = None,
    ):
        if not contributors:
            raise ValueError("ColdFusion needs at least one contributor.")
        names = [contributor.name for contributor in contributors]
        if len(set(names)) != len(names):
            raise ValueError(f"Contributor names must be unique, got {names}.")
        if training_args.max_steps is None or training_args.max_steps <= 0:
            raise ValueError(
                f"training_args.max_steps must be a positive number of local steps per round, got "
                f"{training_args.max_steps}."
            )
        self.contributors = list(contributors)
        self.tna_config = tna_config
        self.training_args = training_args
        self.weights = get_aggregation_weights(self.contributors, weighting)
        self.weighting = weighting
        self.callbacks = list(callbacks or [])
        self.mask_records: list[MaskRecord] = []
        self.round_masks: dict[int, Optional[Masks]] = {}

        self.base_body = dict(initial_body) if initial_body is not None else get_body_state_dict(contributors[0].model)
        for contributor in self.contributors:
            set_body_state_dict(contributor.model, self.base_body)  # raises when a body does not fit
        self.initial_fingerprint = state_dict_fingerprint(self.base_body)

    def _local_args(self, round_index: int, position: int, contributor: Contributor) -> TrainingArguments:
        output_dir = os.path.join(self.training_args.output_dir, f"round-{round_index}", contributor.name)
        seed = self.training_args.seed + 1000 * round_index + position
        return dataclasses.replace(self.training_args, output_dir=output_dir, seed=seed, data_seed=seed)

    def _round_index_for_masks(self, round_index: int) -> Optional[int]:
        return None if self.tna_config.schedule == MaskSchedule.FIXED.value else round_index

    def train_contributor(self, round_index: int, position: int) -> tuple[float, Optional[str], Optional[str]]:
        """Fine-tune one contributor's model from the current base body.

        Returns:
            The mean training loss, the fingerprint of the round's mask and that of its complement (FedPNU only).
        """
        contributor = self.contributors[position]
        set_body_state_dict(contributor.model, self.base_body)
        args = self._local_args(round_index, position, contributor)
        progressive = self.tna_config.schedule == MaskSchedule.PROGRESSIVE.value and self.tna_config.rho > 0
        # FedPNU: the first int(E / 2) of E local steps use the mask, the rest its complement.
        switch_step = args.max_steps // 2 if progressive else None
        if progressive and switch_step == 0:
            raise ValueError(f"FedPNU needs at least 2 local steps to switch to the complement, got {args.max_steps}.")
        schedule_callback = _MaskScheduleCallback(round_index, contributor.name, switch_step, self.mask_records)

        trainer = MaskedTrainer(
            model=contributor.model,
            args=args,
            train_dataset=contributor.train_dataset,
            data_collator=contributor.data_collator,
            tna_config=self.tna_config,
            round_index=self._round_index_for_masks(round_index),
            callbacks=[schedule_callback, *self.callbacks],
        )
        schedule_callback.trainer = trainer
        first_fingerprint = trainer.mask_fingerprint
        if trainer.masks is not None and round_index not in self.round_masks:
            self.round_masks[round_index] = trainer.masks
        output = trainer.train()
        if trainer.masked_update is not None:
            trainer.masked_update.detach()
        return float(output.training_loss), first_fingerprint, schedule_callback.complement_fingerprint

    def run_round(self, round_index: int) -> RoundResult:
        """Train every contributor from the current base, then set the base to the weighted average of their bodies.

        Args:
            round_index: 0-based round number; it selects the mask of the per-round schedules.

        Returns:
            A `RoundResult` with the weights, the new base fingerprint, local training losses and mask fingerprints.
        """
        losses, masks, complements, bodies = {}, {}, {}, []
        for position, contributor in enumerate(self.contributors):
            loss, mask, complement = self.train_contributor(round_index, position)
            losses[contributor.name] = loss
            masks[contributor.name] = mask
            complements[contributor.name] = complement
            bodies.append(get_body_state_dict(contributor.model))
            logger.info("Round %d, %s: local training loss %.4f.", round_index, contributor.name, loss)

        self.base_body = average_bodies(bodies, self.weights)
        for contributor in self.contributors:
            set_body_state_dict(contributor.model, self.base_body)
        fingerprint = state_dict_fingerprint(self.base_body)
        return RoundResult(
            round_index=round_index,
            weights=list(self.weights),
            base_fingerprint=fingerprint,
            training_losses=losses,
            mask_fingerprints=masks,
            complement_fingerprints={name: value for name, value in complements.items() if value is not None},
        )

    def head_fingerprints(self) -> dict[str, str]:
        """Return the fingerprint of every contributor's head, by contributor name."""
        return {c.name: state_dict_fingerprint(get_head_state_dict(c.model)) for c in self.contributors}


# ---------------------------------------------------------------------------------------------- saving and the Hub


def _strip_prefix(masks: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name[len(prefix) :]: mask for name, mask in masks.items() if name.startswith(prefix)}


def save_fused_round(
    save_directory: str,
    model: torch.nn.Module,
    tna_config: TNAConfig,
    masks: Optional[Masks],
    round_info: Mapping[str, Any],
    tokenizer: Any = None,
) -> str:
    """Write a round's fused base as a `transformers` base model folder, with the round's mask and a JSON summary.

    The folder contains the body of `model` (e.g. a `BertModel`, loadable with `AutoModel.from_pretrained`;
    a RoBERTa classifier's body has no pooler, so load it with `add_pooling_layer=False`), the tokenizer
    when given, `tna_config.json`, `tna_mask.safetensors` when the round used a mask (names relative to
    the body, so `load_masks(folder, body_model)` checks them), and
    `cold_fusion_round.json`. For FedPNU the saved mask is the first half's; the second half used its
    complement (`complement_masks`). Files are written to a temporary folder that is then renamed.

    Args:
        save_directory: Output folder; an existing one is replaced.
        model: A contributor's model whose body holds the fused base.
        tna_config: The variant's config.
        masks: The round's masks (full names, as `build_masks(model, ...)` returns), or None without masking.
        round_info: JSON-ready facts about the round (variant, round, fingerprints, accuracies).
        tokenizer: Saved beside the model when given.

    Returns:
        `save_directory`.
    """
    import json
    import shutil

    prefix = get_body_prefix(model)
    body_model = getattr(model, prefix[:-1])
    tmp_directory = save_directory.rstrip(os.sep) + ".tmp"
    if os.path.isdir(tmp_directory):
        shutil.rmtree(tmp_directory)
    body_model.save_pretrained(tmp_directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp_directory)

    # The saved body has no prefix in its names, so the mask and its config are stored relative to it.
    body_config = dataclasses.replace(tna_config, target_patterns=None, exclude_patterns=None)
    if masks is not None:
        save_masks(_strip_prefix(masks, prefix), tmp_directory, config=body_config)
    else:
        body_config.save_pretrained(tmp_directory)
    info = dict(round_info)
    if masks is not None:
        info["mask_fingerprint_body_names"] = mask_fingerprint(_strip_prefix(masks, prefix))
    with open(os.path.join(tmp_directory, ROUND_INFO_NAME), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2, sort_keys=True)
        handle.write("\n")

    if os.path.isdir(save_directory):
        shutil.rmtree(save_directory)
    os.replace(tmp_directory, save_directory)
    return save_directory


def round_revision(variant: str, round_index: int) -> str:
    """Return the Hub branch name of a round's fused base, e.g. `fedpfn-round-2` (rounds counted from 1)."""
    return f"{parse_variant(variant)}-round-{round_index + 1}"


def push_fused_round(
    folder: str,
    repo_id: str,
    revision: str,
    api: Any = None,
    private: bool = True,
    token: Optional[str] = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Upload a round folder to the Hub as the branch `revision` of `repo_id`.

    Three `huggingface_hub.HfApi` calls: `create_repo` (exist_ok), `create_branch` (exist_ok) and
    `upload_folder` on that branch.

    Args:
        folder: Written by `save_fused_round`.
        repo_id: "user/name" on the Hub.
        revision: Branch name, e.g. `round_revision(variant, round_index)`.
        api: An object with the three `HfApi` methods; None creates `HfApi(token=token)`.
        private: Create the repository as private.
        token: Hub token for the default `HfApi`.

    Returns:
        The calls made, as (method name, keyword arguments), in order.

    Raises:
        FileNotFoundError: `folder` does not exist.
        ValueError: `repo_id` is not of the form "owner/name".
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Round folder {folder!r} not found; write it with save_fused_round first.")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"hub repo id must look like 'owner/name', got {repo_id!r}.")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    calls = [
        ("create_repo", {"repo_id": repo_id, "private": private, "exist_ok": True, "repo_type": "model"}),
        ("create_branch", {"repo_id": repo_id, "branch": revision, "exist_ok": True, "repo_type": "model"}),
        (
            "upload_folder",
            {
                "repo_id": repo_id,
                "folder_path": folder,
                "revision": revision,
                "repo_type": "model",
                "commit_message": f"ColD fusion: fused base {revision}",
            },
        ),
    ]
    for method, kwargs in calls:
        getattr(api, method)(**copy.deepcopy(kwargs))
    logger.info("Pushed %s to %s at revision %s.", folder, repo_id, revision)
    return calls
