"""`MaskedTrainer`: TNA-PFN fine-tuning with the Hugging Face `transformers.Trainer`.

TNA-PFN (Li et al., "Training-time Neuron Alignment through Permutation Subspace for Improving
Linear Mode Connectivity and Model Fusion", https://arxiv.org/abs/2402.01342) keeps a random
fraction `rho` of every targeted weight tensor at its initial value during training, so models
fine-tuned from one initialization with one mask stay in one permutation subspace and fuse well.

`MaskedTrainer` builds (or loads) the mask, attaches a `MaskedUpdate` to whatever optimizer the
Trainer ends up with, and writes the mask next to every saved model and checkpoint so that
resuming, fusing and uploading keep it.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from typing import Any, Optional, Union

import torch
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from .checkpoint import PROVENANCE_NAME, save_provenance
from .config import CONFIG_NAME, MaskMode, MaskSchedule, TNAConfig
from .masks import (
    MASK_NAME,
    MaskMismatchError,
    Masks,
    build_masks,
    check_masks_match_model,
    fraction_fixed,
    load_masks,
    mask_fingerprint,
    save_masks,
    unwrap_model,
)
from .update import MaskedUpdate

logger = logging.getLogger(__name__)

METHOD_URL = "https://arxiv.org/abs/2402.01342"
TNA_FILES = (CONFIG_NAME, MASK_NAME, PROVENANCE_NAME)
_MODEL_CARD_START = "<!-- tna_hf model card section: start -->"
_MODEL_CARD_END = "<!-- tna_hf model card section: end -->"

# These optimizers update parameters inside backward hooks instead of in `optimizer.step()`, so the
# step post-hook that restores the fixed entries would never run.
_UNSUPPORTED_OPTIMIZERS = ("lomo", "adalomo")


def _optimizer_name(args: Any) -> str:
    optim = getattr(args, "optim", "")
    return str(getattr(optim, "value", optim))


def _resolve_mask_source(
    tna_config: Union[TNAConfig, str, os.PathLike, None], mask_dir: Union[str, os.PathLike, None]
) -> tuple[TNAConfig, Optional[str]]:
    """Return the config and the mask directory to load from (None when the mask is built)."""
    if tna_config is not None and mask_dir is not None:
        raise ValueError(
            "Pass either tna_config or mask_dir to MaskedTrainer, not both: a mask directory already contains "
            f"its config (got tna_config={tna_config!r} and mask_dir={mask_dir!r})."
        )
    if tna_config is None and mask_dir is None:
        raise ValueError(
            "MaskedTrainer requires tna_config=TNAConfig(...) or mask_dir='path/to/saved/mask'. "
            "Use TNAConfig(rho=0) for vanilla training that still records its config."
        )
    if isinstance(tna_config, (str, os.PathLike)):
        mask_dir, tna_config = tna_config, None

    if mask_dir is not None:
        if not isinstance(mask_dir, (str, os.PathLike)):
            raise TypeError(f"mask_dir must be a path (str or os.PathLike), got {type(mask_dir).__name__}.")
        mask_dir = os.fspath(mask_dir)
        if not os.path.isdir(mask_dir):
            raise FileNotFoundError(
                f"Mask directory {mask_dir!r} not found. Pass a folder written by MaskedTrainer.save_model "
                f"or save_masks, containing {CONFIG_NAME} and {MASK_NAME}."
            )
        if not os.path.isfile(os.path.join(mask_dir, CONFIG_NAME)):
            raise FileNotFoundError(
                f"Mask directory {mask_dir!r} is missing {CONFIG_NAME}. Pass a folder written by "
                "MaskedTrainer.save_model or save_masks(masks, folder, config)."
            )
        config = TNAConfig.from_pretrained(mask_dir)
        if config.rho > 0 and not os.path.isfile(os.path.join(mask_dir, MASK_NAME)):
            raise FileNotFoundError(
                f"Mask directory {mask_dir!r} is missing {MASK_NAME} (its {CONFIG_NAME} has rho={config.rho}). "
                "Pass a folder written by MaskedTrainer.save_model or save_masks."
            )
        return config, mask_dir

    if not isinstance(tna_config, TNAConfig):
        hint = " Build one with TNAConfig(**your_dict)." if isinstance(tna_config, dict) else ""
        raise TypeError(
            "tna_config must be a TNAConfig or the path of a saved mask directory, got "
            f"{type(tna_config).__name__} ({tna_config!r}).{hint}"
        )
    return tna_config, None


class MaskedTrainer(Trainer):
    """A `transformers.Trainer` that trains with TNA-PFN masks and keeps the fixed entries bit-identical.

    Before the first optimizer step the trainer attaches a `MaskedUpdate` to its optimizer, whichever
    it is (`args.optim` such as `adamw_torch`, `adamw_torch_fused`, `sgd` or `adafactor`,
    `optimizer_cls_and_kwargs`, or a user optimizer passed as `optimizers=(optimizer, scheduler)`).
    Gradient hooks zero the gradient of fixed entries during backward, so gradient clipping and the
    logged `grad_norm` use the masked gradient. A step post-hook restores the fixed entries exactly
    after every step, whatever weight decay, momentum, mixed precision or accumulation do. The hooks
    stay on the model after training; `trainer.masked_update.detach()` removes them.

    Every `save_model` output and every `checkpoint-N` folder gets `tna_config.json`,
    `tna_mask.safetensors` and `tna_provenance.json`, so `push_to_hub` uploads the mask and the
    model card gains a TNA-PFN section. Resuming checks that the checkpoint's mask equals this
    trainer's mask.

    With a PEFT model (e.g. LoRA), only the trainable parameters (the adapters and any
    `modules_to_save`) are targeted. `rho=0` trains exactly like `Trainer`, with no hooks attached,
    and still saves the config.

    Args:
        model, args, *trainer_args, **trainer_kwargs: Passed on to `transformers.Trainer`.
        tna_config: A `TNAConfig`, or the path of a saved mask directory (as `mask_dir`).
        mask_dir: A directory containing `tna_config.json` and `tna_mask.safetensors` (written by
            `save_model` or `save_masks`); its mask is loaded and checked against the model.
        round_index: Round of a multi-round mask schedule (`per_round`, `progressive`), passed to
            `build_masks`; None for the single mask of the `fixed` schedule.
        init_fingerprint: Fingerprint of the initial checkpoint the model was loaded from (returned by
            `load_initial_checkpoint`), recorded in `tna_provenance.json`; None if unknown.

    Raises:
        TypeError: `tna_config` is neither a `TNAConfig` nor a path.
        ValueError: Both or neither of `tna_config` and `mask_dir` are given; FSDP or DeepSpeed is
            enabled; `args.optim` updates parameters outside `optimizer.step()`.
        FileNotFoundError: `mask_dir` or one of its files is missing.
        MaskMismatchError: The saved mask does not fit the model.

    Example:

    ```python
    >>> from tna_hf import TNAConfig
    >>> from tna_hf.trainer import MaskedTrainer
    >>> trainer = MaskedTrainer(model=model, args=args, train_dataset=ds, tna_config=TNAConfig(rho=0.4))
    >>> trainer.train()
    >>> trainer.masked_update.verify()  # names of parameters whose fixed entries moved
    []
    >>> trainer.save_model("out")  # model files + tna_config.json + tna_mask.safetensors
    ```
    """

    def __init__(
        self,
        model: Optional[torch.nn.Module] = None,
        args: Any = None,
        *trainer_args: Any,
        tna_config: Union[TNAConfig, str, os.PathLike, None] = None,
        mask_dir: Union[str, os.PathLike, None] = None,
        round_index: Optional[int] = None,
        init_fingerprint: Optional[str] = None,
        **trainer_kwargs: Any,
    ):
        # Validate our own inputs before the Trainer sets up devices and the accelerator.
        config, source_dir = _resolve_mask_source(tna_config, mask_dir)
        if args is not None:
            _check_training_arguments(args)
        if config.schedule != MaskSchedule.FIXED.value and round_index is None:
            warnings.warn(
                f"TNAConfig.schedule={config.schedule!r} changes the mask between rounds, but round_index is None, "
                "so this trainer uses the round-independent mask. Pass round_index for each round.",
                stacklevel=2,
            )

        super().__init__(model, args, *trainer_args, **trainer_kwargs)

        # `accelerate launch` with an FSDP or DeepSpeed config enables them without any TrainingArguments flag.
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            backend = "FSDP" if self.is_fsdp_enabled else "DeepSpeed"
            raise ValueError(
                f"MaskedTrainer does not support {backend} (enabled by the accelerate config or TrainingArguments): "
                "sharded parameters break the per-tensor masks. Train with DDP instead "
                "(accelerate launch --multi_gpu, or torchrun)."
            )

        self.tna_config = config
        self.round_index = round_index
        self.init_fingerprint = init_fingerprint
        self.mask_source_dir = source_dir
        self.masked_update: Optional[MaskedUpdate] = None
        self.masks: Optional[Masks] = None
        self.mask_fingerprint: Optional[str] = None
        if config.rho > 0:
            if source_dir is not None:
                self.masks = load_masks(source_dir, model=self.model, config=config)
            else:
                self.masks = build_masks(self.model, config, round_index=round_index)
            self.mask_fingerprint = mask_fingerprint(self.masks)

    # ------------------------------------------------------------------ optimizer

    def create_optimizer(self, model: Optional[torch.nn.Module] = None) -> torch.optim.Optimizer:
        """Create the optimizer as `Trainer` does (or take the user's), then attach the masked update.

        Every call takes a new snapshot of the fixed entries. `Trainer.train` calls this after loading the
        checkpoint to resume from, so the fixed values come from the resumed weights. In `prune` mode the
        fixed entries are set to zero here.
        """
        optimizer = super().create_optimizer(model)
        if self.masks is None:
            return optimizer

        # Drop the hooks of an earlier `train()` call: its model may have been replaced (`model_init`) or reloaded.
        if self.masked_update is not None:
            self.masked_update.detach()
        target = unwrap_model(self.model)
        check_masks_match_model(self.masks, target, self.tna_config, source="MaskedTrainer masks")
        self.masked_update = MaskedUpdate(target, self.masks, mode=self.tna_config.mode).attach(optimizer)

        fixed = self.masked_update.fraction_fixed()
        if self.is_world_process_zero():
            logger.info(
                "TNA-PFN: %d of %d targeted entries fixed (fraction %.4f, rho=%s, mode=%s, %d tensors, mask %s).",
                self.masked_update.num_fixed(),
                sum(mask.numel() for mask in self.masks.values()),
                fixed,
                self.tna_config.rho,
                self.tna_config.mode,
                len(self.masks),
                self.mask_fingerprint[:12],
            )
        self.log({"tna_fraction_fixed": fixed})
        return optimizer

    # ------------------------------------------------------------------ training

    def train(
        self,
        resume_from_checkpoint: Union[str, bool, None] = None,
        trial: Any = None,
        ignore_keys_for_eval: Optional[list[str]] = None,
    ):
        """Train as `Trainer.train` does, but first check that a checkpoint to resume from has this trainer's mask.

        Raises:
            FileNotFoundError: The checkpoint was not written by a `MaskedTrainer` (no `tna_config.json`).
            MaskMismatchError: The checkpoint's config or mask fingerprint differs from this trainer's.
            RuntimeError: After training, a fixed entry differs from its value at attach time.
        """
        if isinstance(resume_from_checkpoint, bool) and resume_from_checkpoint:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(
                    f"resume_from_checkpoint=True but no checkpoint-N folder was found in {self.args.output_dir!r}."
                )
        if isinstance(resume_from_checkpoint, (str, os.PathLike)):
            self._check_checkpoint_mask(os.fspath(resume_from_checkpoint))

        output = super().train(
            resume_from_checkpoint=resume_from_checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
        )

        if self.masked_update is not None:
            changed = self.masked_update.verify()
            if changed:
                raise RuntimeError(
                    f"Fixed entries of {changed} changed during training. Something updated the parameters outside "
                    "optimizer.step(); report it with the optimizer and TrainingArguments used."
                )
        return output

    def _check_checkpoint_mask(self, checkpoint: str) -> None:
        if not os.path.isfile(os.path.join(checkpoint, CONFIG_NAME)):
            raise FileNotFoundError(
                f"Checkpoint {checkpoint!r} has no {CONFIG_NAME}, so it was not saved by MaskedTrainer and its mask "
                "cannot be checked. Resume with the trainer type that wrote it, or start a new run from its weights."
            )
        saved = TNAConfig.from_pretrained(checkpoint).to_dict()
        current = self.tna_config.to_dict()
        differences = [
            f"{key}: checkpoint {saved[key]!r}, trainer {value!r}"
            for key, value in current.items()
            if saved[key] != value
        ]
        if differences:
            raise MaskMismatchError(
                f"Checkpoint {checkpoint!r} was trained with another TNA config ({'; '.join(differences)}). "
                "Resume with the same TNAConfig, e.g. MaskedTrainer(..., tna_config=checkpoint)."
            )
        if self.masks is None:
            return

        # Raises with the difference when the checkpoint's mask is not the one rebuilt or loaded here.
        load_masks(checkpoint, model=self.model, config=self.tna_config, expected_fingerprint=self.mask_fingerprint)
        if self.is_world_process_zero():
            logger.info("Resuming from %s with the same mask (fingerprint %s).", checkpoint, self.mask_fingerprint)

    # ------------------------------------------------------------------ saving

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        # `save_model`, every checkpoint and `push_to_hub` all write the model through `_save`.
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            self.save_mask(output_dir if output_dir is not None else self.args.output_dir)

    def save_mask(self, save_directory: Union[str, os.PathLike]) -> None:
        """Write `tna_config.json`, `tna_mask.safetensors` (when rho > 0) and `tna_provenance.json`.

        `save_model` and every checkpoint call this on the main process; call it yourself only to export
        the mask without the model.
        """
        save_directory = os.fspath(save_directory)
        if self.masks is not None:
            save_masks(self.masks, save_directory, config=self.tna_config)
        else:
            self.tna_config.save_pretrained(save_directory)
        save_provenance(save_directory, self.init_fingerprint, self.mask_fingerprint)

    def get_mask_summary(self) -> dict[str, Any]:
        """Return the mask's settings, size and fingerprint as a JSON-ready dict (shown in the model card)."""
        masks = self.masks or {}
        return {
            "rho": self.tna_config.rho,
            "seed": self.tna_config.seed,
            "mode": self.tna_config.mode,
            "round_index": self.round_index,
            "fraction_fixed": fraction_fixed(masks),
            "num_targeted_tensors": len(masks),
            "num_targeted_entries": sum(mask.numel() for mask in masks.values()),
            "mask_fingerprint": self.mask_fingerprint,
        }

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # `Trainer._push_from_checkpoint` uploads the output folder after copying only the model files into it,
        # so bring the mask files along first.
        if self.is_world_process_zero():
            copy_mask_files(checkpoint_folder, self.args.output_dir)
        super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Write the Trainer's model card (`README.md` in `args.output_dir`) and add a TNA-PFN section to it."""
        super().create_model_card(*args, **kwargs)
        if not self.is_world_process_zero():
            return
        path = os.path.join(self.args.output_dir, "README.md")
        text = ""
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        if _MODEL_CARD_START in text and _MODEL_CARD_END in text:
            head, rest = text.split(_MODEL_CARD_START, 1)
            text = head.rstrip("\n") + rest.split(_MODEL_CARD_END, 1)[1]
        text = text.rstrip("\n") + "\n\n" + self.get_model_card_section() + "\n"
        tmp_path = path + ".tmp"
        with open(tmp_path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp_path, path)

    def get_model_card_section(self) -> str:
        """Return the Markdown section that describes the TNA-PFN mask of this model."""
        summary = self.get_mask_summary()
        if self.tna_config.mode == MaskMode.PRUNE.value:
            fixed_entries_text = (
                "set to zero at the start of training and kept at zero (random pruning at initialization)"
            )
        else:
            fixed_entries_text = "kept at their initial values (partially fixed neurons)"
        lines = [
            _MODEL_CARD_START,
            "## Training-time neuron alignment (TNA-PFN)",
            "",
            f"This model was trained with [TNA-PFN]({METHOD_URL}) using `tna_hf`: in every targeted weight "
            f"tensor, a random fraction rho of the entries was {fixed_entries_text}. Models trained from the "
            "same initial checkpoint with the same mask fuse well (model soups, federated averaging, ColD fusion).",
            "",
            "| setting | value |",
            "| --- | --- |",
            f"| rho (mask ratio) | {summary['rho']} |",
            f"| mask seed | {summary['seed']} |",
            f"| mode | {summary['mode']} |",
            f"| fraction of targeted entries fixed | {summary['fraction_fixed']:.4f} |",
            f"| targeted tensors | {summary['num_targeted_tensors']} |",
            f"| targeted entries | {summary['num_targeted_entries']} |",
            f"| mask fingerprint (sha256) | `{summary['mask_fingerprint']}` |",
            "",
        ]
        if self.masks is not None:
            lines.append(
                f"The mask is stored in `{MASK_NAME}` and its settings in `{CONFIG_NAME}`; "
                "`tna_hf.load_masks(folder, model)` loads it and checks it against the model."
            )
        else:
            lines.append("rho is 0, so no entry was fixed: this is vanilla fine-tuning.")
        lines.append(_MODEL_CARD_END)
        return "\n".join(lines)


def copy_mask_files(source_dir: Union[str, os.PathLike], target_dir: Union[str, os.PathLike]) -> list[str]:
    """Copy the TNA files that exist in `source_dir` into `target_dir` and return the names copied."""
    copied = []
    for name in TNA_FILES:
        source = os.path.join(source_dir, name)
        if os.path.isfile(source):
            target = os.path.join(target_dir, name)
            shutil.copyfile(source, target + ".tmp")
            os.replace(target + ".tmp", target)
            copied.append(name)
    return copied


def _check_training_arguments(args: Any) -> None:
    if getattr(args, "fsdp", None):
        raise ValueError(
            f"MaskedTrainer does not support FSDP (TrainingArguments.fsdp={args.fsdp!r}): sharded parameters break "
            "the per-tensor masks. Train with DDP instead (accelerate launch --multi_gpu, or torchrun)."
        )
    if getattr(args, "deepspeed", None):
        raise ValueError(
            f"MaskedTrainer does not support DeepSpeed (TrainingArguments.deepspeed={args.deepspeed!r}): ZeRO "
            "partitions parameters and steps outside the torch optimizer. Train with DDP instead "
            "(accelerate launch --multi_gpu, or torchrun)."
        )
    optim = _optimizer_name(args)
    if optim in _UNSUPPORTED_OPTIMIZERS or "layerwise" in optim:
        raise ValueError(
            f"MaskedTrainer does not support TrainingArguments.optim={optim!r}: it updates parameters during "
            "backward, outside optimizer.step(), so fixed entries would move. Use e.g. 'adamw_torch', "
            "'adamw_torch_fused', 'sgd' or 'adafactor'."
        )
