"""The shared initial checkpoint and the provenance of fine-tuned models.

Model soups, loss barriers, federated averaging and ColD fusion only make sense between models
that start from the same weights (TNA-PFN, Li et al.: models trained from one initialization with
one mask stay in one permutation subspace). This module saves that initial checkpoint once, any
freshly initialized head included, and records its fingerprint in `tna_init.json`. A fine-tuned
output directory records which initial checkpoint and which mask it came from in
`tna_provenance.json`, so fusion code can check that its ingredients agree.

Files written here:

- `model.safetensors`: the initial weights (every state dict entry, tied tensors stored once per name).
- `tna_init.json`: the checkpoint fingerprint and, when masks were given, the mask fingerprint.
- `tna_mask.safetensors` and `tna_config.json`: the masks and config, when given (see `tna_hf.masks`).
- `tna_provenance.json` (in a fine-tuned output directory): initial checkpoint and mask fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional, Union

import torch
from safetensors.torch import load_file, save_file

from .config import TNAConfig
from .masks import mask_fingerprint, save_masks, unwrap_model

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
INIT_INFO_NAME = "tna_init.json"
PROVENANCE_NAME = "tna_provenance.json"
_FORMAT_VERSION = "1"

PathLike = Union[str, os.PathLike]


class CheckpointMismatchError(ValueError):
    """Raised when an initial checkpoint does not fit a model or does not match its recorded fingerprint."""


@dataclass(frozen=True)
class Provenance:
    """Origin of a fine-tuned model: the initial checkpoint it started from and the mask it trained with.

    Attributes:
        init_fingerprint: `state_dict_fingerprint` of the initial checkpoint, or None if unknown.
        mask_fingerprint: `mask_fingerprint` of the masks used in training, or None for vanilla training.
    """

    init_fingerprint: Optional[str]
    mask_fingerprint: Optional[str]


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    # Reinterpret the memory as bytes, so dtypes without a numpy equivalent (bfloat16) hash as well.
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def state_dict_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Compute the sha256 over the sorted names, dtypes, shapes and raw bytes of every tensor in `state_dict`.

    Two state dicts have the same fingerprint exactly when they contain the same names with bit-identical
    tensors of the same dtype and shape. The device and the insertion order do not matter.

    Args:
        state_dict: Mapping from name to tensor, e.g. `model.state_dict()`.

    Returns:
        The hex digest (64 characters).

    Raises:
        TypeError: A value is not a tensor.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}] is a {type(tensor).__name__}, expected a torch.Tensor.")
        header = json.dumps([name, str(tensor.dtype), list(tensor.shape)])
        digest.update(header.encode("utf-8"))
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _write_json_atomic(payload: dict, path: str) -> None:
    tmp_path = path + ".tmp"
    with open(tmp_path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp_path, path)


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _savable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors rejects tensors that share memory (tied embeddings and output layers), so every
    # entry gets its own contiguous CPU copy. Both names of a tied pair are kept, as in state_dict().
    return {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in model.state_dict().items()}


def has_initial_checkpoint(directory: PathLike) -> bool:
    """Return whether `directory` contains an initial checkpoint written by `save_initial_checkpoint`."""
    return os.path.isfile(os.path.join(directory, INIT_INFO_NAME))


def read_init_fingerprint(directory: PathLike) -> str:
    """Return the checkpoint fingerprint recorded in `directory/tna_init.json`, without loading the weights.

    Raises:
        FileNotFoundError: `directory` contains no `tna_init.json`.
    """
    path = os.path.join(directory, INIT_INFO_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No {INIT_INFO_NAME} in {str(directory)!r}: it is not an initial checkpoint. "
            "Create one with save_initial_checkpoint(model, directory)."
        )
    return _read_json(path)["fingerprint"]


def save_initial_checkpoint(
    model: torch.nn.Module,
    directory: PathLike,
    tna_config: Optional[TNAConfig] = None,
    masks: Optional[Mapping[str, torch.Tensor]] = None,
    overwrite: bool = False,
) -> str:
    """Save the initial checkpoint that every model of an experiment starts from.

    Writes `model.safetensors` (every entry of `model.state_dict()`, buffers included) and
    `tna_init.json` with the checkpoint fingerprint, each to a temporary file that is then renamed.
    `tna_init.json` is written last, so its presence marks a complete checkpoint.
    With `masks`, also writes `tna_mask.safetensors` and records the mask fingerprint; with
    `tna_config`, also writes `tna_config.json`.

    When `directory` already contains an initial checkpoint and `overwrite` is False, nothing is
    written: if its fingerprint equals that of `model` (and of `masks`, when given), the call returns
    it, otherwise it raises. Use `ensure_initial_checkpoint` to load an existing checkpoint instead.

    Args:
        model: The freshly initialized model, any new head included. DDP and DataParallel wrappers
            are removed, so names carry no `module.` prefix.
        directory: Output folder, created if missing.
        tna_config: Saved as `tna_config.json` beside the masks.
        masks: Saved as `tna_mask.safetensors`; their fingerprint goes into `tna_init.json`.
        overwrite: Replace an existing checkpoint with different weights.

    Returns:
        The checkpoint fingerprint (`state_dict_fingerprint` of the saved tensors).

    Raises:
        FileExistsError: `directory` contains a different initial checkpoint, or a `model.safetensors`
            that is not an initial checkpoint, and `overwrite` is False.

    Example:

    ```python
    >>> fingerprint = save_initial_checkpoint(model, "runs/init", tna_config=config, masks=masks)
    >>> load_initial_checkpoint(other_model, "runs/init") == fingerprint
    True
    ```
    """
    from tna_hf import __version__

    directory = os.fspath(directory)
    model = unwrap_model(model)
    state_dict = _savable_state_dict(model)
    fingerprint = state_dict_fingerprint(state_dict)
    masks_fingerprint = mask_fingerprint(masks) if masks is not None else None
    weights_path = os.path.join(directory, WEIGHTS_NAME)

    # Never replace an existing checkpoint silently: the models already trained from it would lose their origin.
    if not overwrite:
        if has_initial_checkpoint(directory):
            info = _read_json(os.path.join(directory, INIT_INFO_NAME))
            same_weights = info.get("fingerprint") == fingerprint
            same_masks = masks is None or info.get("mask_fingerprint") == masks_fingerprint
            if same_weights and same_masks:
                logger.info(
                    "Initial checkpoint in %s already matches the model (fingerprint %s).", directory, fingerprint
                )
                return fingerprint
            differing_part = "weights" if not same_weights else "masks"
            raise FileExistsError(
                f"{directory!r} already contains an initial checkpoint with different {differing_part} "
                f"(saved fingerprint {info.get('fingerprint')}, model fingerprint {fingerprint}). "
                "Call load_initial_checkpoint(model, directory) to start from the saved one, "
                "or pass overwrite=True to replace it."
            )
        if os.path.exists(weights_path):
            raise FileExistsError(
                f"{weights_path!r} exists but has no {INIT_INFO_NAME}, so it is not an initial checkpoint. "
                "Choose an empty directory or pass overwrite=True to replace the file."
            )

    os.makedirs(directory, exist_ok=True)
    tmp_path = weights_path + ".tmp"
    save_file(state_dict, tmp_path, metadata={"format": "pt", "tna_init_fingerprint": fingerprint})
    os.replace(tmp_path, weights_path)
    if masks is not None:
        save_masks(masks, directory, config=tna_config)
    elif tna_config is not None:
        tna_config.save_pretrained(directory)

    info = {
        "format_version": _FORMAT_VERSION,
        "tna_hf_version": __version__,
        "fingerprint": fingerprint,
        "mask_fingerprint": masks_fingerprint,
        "model_class": type(model).__name__,
        "num_tensors": len(state_dict),
    }
    _write_json_atomic(info, os.path.join(directory, INIT_INFO_NAME))
    logger.info("Saved initial checkpoint to %s (fingerprint %s).", directory, fingerprint)
    return fingerprint


def _check_state_dict_fits(loaded: Mapping[str, torch.Tensor], model: torch.nn.Module, source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    misshaped = sorted(
        f"{name}: checkpoint {tuple(loaded[name].shape)} vs model {tuple(expected[name].shape)}"
        for name in loaded
        if name in expected and tuple(loaded[name].shape) != tuple(expected[name].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing keys (in the model, not in the checkpoint): {missing}")
    if unexpected:
        problems.append(f"unexpected keys (in the checkpoint, not in the model): {unexpected}")
    if misshaped:
        problems.append(f"shape mismatches: {misshaped}")
    if problems:
        raise CheckpointMismatchError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems) + ".")


def load_initial_checkpoint(model: torch.nn.Module, directory: PathLike) -> str:
    """Load the initial checkpoint in `directory` into `model` and return its fingerprint.

    Loading is strict: every key of `model.state_dict()` must be in the checkpoint with the same
    shape and the checkpoint may contain no other key. The loaded tensors are checked against the
    fingerprint in `tna_init.json`, so a corrupt or replaced `model.safetensors` is detected.
    Tensors are copied into the model's existing parameters and buffers, cast to their dtype.

    Args:
        model: The model to overwrite in place (DDP / DataParallel wrappers are removed).
        directory: Folder written by `save_initial_checkpoint`.

    Returns:
        The checkpoint fingerprint, to be recorded with `save_provenance` in the fine-tuned output.

    Raises:
        FileNotFoundError: `tna_init.json` or `model.safetensors` is missing.
        CheckpointMismatchError: The weights do not match the recorded fingerprint, or names or
            shapes do not fit `model` (the message lists every missing, unexpected and mis-shaped key).
    """
    directory = os.fspath(directory)
    recorded = read_init_fingerprint(directory)
    weights_path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"{weights_path!r} is missing; the initial checkpoint in {directory!r} is incomplete.")

    loaded = load_file(weights_path, device="cpu")
    found = state_dict_fingerprint(loaded)
    if found != recorded:
        raise CheckpointMismatchError(
            f"{weights_path!r} has fingerprint {found}, but {INIT_INFO_NAME} records {recorded}: "
            "the file was changed or is corrupt. Save the initial checkpoint again."
        )

    model = unwrap_model(model)
    _check_state_dict_fits(loaded, model, source=weights_path)
    model.load_state_dict(loaded, strict=True)
    logger.info("Loaded initial checkpoint from %s (fingerprint %s).", directory, recorded)
    return recorded


def ensure_initial_checkpoint(
    model: torch.nn.Module,
    directory: PathLike,
    tna_config: Optional[TNAConfig] = None,
    masks: Optional[Mapping[str, torch.Tensor]] = None,
) -> str:
    """Save `model` as the initial checkpoint if `directory` has none, else load the saved one into `model`.

    Every run of an experiment can call this with its freshly built model: the first run writes the
    checkpoint and every later run starts from exactly the same weights.

    NOTE: Concurrent first calls are not coordinated, and each process would save its own random
    weights. In multi-process training, call it on the main process, wait for every process
    (`accelerator.wait_for_everyone()`), then call it on the others.

    Returns:
        The checkpoint fingerprint.

    Raises:
        CheckpointMismatchError: The saved checkpoint does not fit `model` (see `load_initial_checkpoint`).
    """
    if has_initial_checkpoint(directory):
        return load_initial_checkpoint(model, directory)
    return save_initial_checkpoint(model, directory, tna_config=tna_config, masks=masks)


def save_provenance(directory: PathLike, init_fingerprint: Optional[str], mask_fingerprint: Optional[str]) -> str:
    """Record in `directory/tna_provenance.json` which initial checkpoint and mask a fine-tuned model comes from.

    Args:
        directory: The fine-tuned model's output folder, created if missing.
        init_fingerprint: Returned by `save_initial_checkpoint` or `load_initial_checkpoint`; None if unknown.
        mask_fingerprint: `tna_hf.mask_fingerprint(masks)` of the training masks; None for vanilla training.

    Returns:
        The path of the written file.
    """
    from tna_hf import __version__

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, PROVENANCE_NAME)
    payload = {
        "format_version": _FORMAT_VERSION,
        "tna_hf_version": __version__,
        "init_fingerprint": init_fingerprint,
        "mask_fingerprint": mask_fingerprint,
    }
    _write_json_atomic(payload, path)
    return path


def load_provenance(directory: PathLike) -> Provenance:
    """Read `directory/tna_provenance.json` written by `save_provenance`.

    Raises:
        FileNotFoundError: The file is missing.
        ValueError: The file lacks the `init_fingerprint` or `mask_fingerprint` field.
    """
    path = os.path.join(directory, PROVENANCE_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No {PROVENANCE_NAME} in {str(directory)!r}. Record it with save_provenance after training."
        )
    payload = _read_json(path)
    missing = [key for key in ("init_fingerprint", "mask_fingerprint") if key not in payload]
    if missing:
        raise ValueError(f"{path} lacks the fields {missing}; it was not written by save_provenance.")
    return Provenance(init_fingerprint=payload["init_fingerprint"], mask_fingerprint=payload["mask_fingerprint"])
