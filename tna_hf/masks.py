"""Building, complementing, fingerprinting, saving and loading TNA-PFN masks.

A mask is a boolean tensor per targeted parameter, `True` where the entry is trainable and
`False` where it is fixed. The mask of a parameter depends only on the config seed, the
parameter name, its shape, rho and (for multi-round schedules) the round index, so every
process, device and run that builds it gets the same bits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Optional, Union

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import TNAConfig

logger = logging.getLogger(__name__)

MASK_NAME = "tna_mask.safetensors"
_BITS_KEY = "mask_bits"
_FORMAT_VERSION = "1"

Masks = dict[str, torch.Tensor]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DistributedDataParallel / DataParallel wrappers so parameter names carry no `module.` prefix."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


def targeted_parameters(model: torch.nn.Module, config: TNAConfig) -> dict[str, torch.nn.Parameter]:
    """Return the trainable parameters of `model` that `config` targets, by name, in model order."""
    model = unwrap_model(model)
    return {
        name: param
        for name, param in model.named_parameters()
        if param.requires_grad and config.is_targeted(name)
    }


def _mask_generator_seed(seed: int, name: str, shape: tuple[int, ...], rho: float, round_index: Optional[int]) -> int:
    # sha256 rather than Python's hash(), which is salted per process.
    key = json.dumps([seed, name, list(shape), repr(float(rho)), round_index])
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little") & ((1 << 63) - 1)


def build_mask(
    name: str, shape: Iterable[int], rho: float, seed: int, round_index: Optional[int] = None
) -> torch.Tensor:
    """Build the mask of one tensor: exactly `round(rho * numel)` entries are `False` (fixed).

    The fixed positions are the first entries of a permutation drawn from a private CPU generator
    seeded from (seed, name, shape, rho, round_index), so the global RNG state is never read or changed.
    """
    shape = tuple(int(size) for size in shape)
    numel = int(np.prod(shape)) if shape else 1
    num_fixed = int(round(rho * numel))
    generator = torch.Generator(device="cpu").manual_seed(_mask_generator_seed(seed, name, shape, rho, round_index))
    mask = torch.ones(numel, dtype=torch.bool)
    if num_fixed:
        fixed_positions = torch.randperm(numel, generator=generator)[:num_fixed]
        mask[fixed_positions] = False
    return mask.view(shape)


def build_masks(model: torch.nn.Module, config: TNAConfig, round_index: Optional[int] = None) -> Masks:
    """Build the masks of every parameter of `model` that `config` targets.

    Args:
        model: The model, possibly wrapped in DistributedDataParallel or PEFT; frozen parameters are skipped.
        config: Supplies rho, seed and the target / exclude patterns.
        round_index: Round of a multi-round schedule (`per_round`, `progressive`); None for a single mask.

    Returns:
        A dict from parameter name to a CPU bool tensor of the parameter's shape (`True` = trainable).

    Example:

    ```python
    >>> masks = build_masks(model, TNAConfig(rho=0.4, seed=0))
    >>> fraction_fixed(masks)  # about 0.4
    ```
    """
    params = targeted_parameters(model, config)
    if not params:
        raise ValueError(
            f"No trainable parameter of {type(unwrap_model(model)).__name__} matches "
            f"target_patterns={config.target_patterns} and exclude_patterns={config.exclude_patterns}. "
            "Loosen the patterns or unfreeze parameters."
        )
    return {
        name: build_mask(name, param.shape, config.rho, config.seed, round_index) for name, param in params.items()
    }


def complement_masks(masks: Mapping[str, torch.Tensor]) -> Masks:
    """Return the complement mask (`~mask`) of every targeted tensor, as FedPNU uses for its second phase."""
    return {name: ~mask for name, mask in masks.items()}


def fraction_fixed(masks: Mapping[str, torch.Tensor]) -> float:
    """Return the fraction of targeted entries that are fixed."""
    total = sum(mask.numel() for mask in masks.values())
    fixed = sum(int((~mask).sum()) for mask in masks.values())
    return fixed / total if total else 0.0


def _packed_bits(masks: Mapping[str, torch.Tensor]) -> np.ndarray:
    # One bit per targeted entry, tensors in sorted-name order, each flattened in row-major order.
    if not masks:
        return np.zeros(0, dtype=np.uint8)
    flat = np.concatenate([masks[name].detach().cpu().reshape(-1).numpy() for name in sorted(masks)])
    return np.packbits(flat.astype(np.uint8))


def _fingerprint(names_and_shapes: list[tuple[str, list[int]]], packed: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(names_and_shapes).encode("utf-8"))
    digest.update(packed.tobytes())
    return digest.hexdigest()


def mask_fingerprint(masks: Mapping[str, torch.Tensor]) -> str:
    """Return the sha256 over the sorted parameter names, their shapes and the mask bits."""
    names_and_shapes = [(name, list(masks[name].shape)) for name in sorted(masks)]
    return _fingerprint(names_and_shapes, _packed_bits(masks))


def save_masks(
    masks: Mapping[str, torch.Tensor],
    save_directory: Union[str, os.PathLike],
    config: Optional[TNAConfig] = None,
) -> str:
    """Save `masks` as bit-packed `tna_mask.safetensors` (and `config` as `tna_config.json`) in `save_directory`.

    The file contains one uint8 tensor of packed bits and a JSON header (names, shapes, fingerprint) in the
    safetensors metadata: one bit per targeted entry plus the header. It is written to a temporary file
    and renamed, so an existing mask file is never half-written. Returns the mask file's path.
    """
    from tna_hf import __version__

    os.makedirs(save_directory, exist_ok=True)
    packed = _packed_bits(masks)
    names_and_shapes = [(name, list(masks[name].shape)) for name in sorted(masks)]
    header = {
        "format_version": _FORMAT_VERSION,
        "tna_hf_version": __version__,
        "names_and_shapes": json.dumps(names_and_shapes),
        "fingerprint": _fingerprint(names_and_shapes, packed),
    }
    path = os.path.join(save_directory, MASK_NAME)
    tmp_path = path + ".tmp"
    save_file({_BITS_KEY: torch.from_numpy(packed)}, tmp_path, metadata=header)
    os.replace(tmp_path, path)
    if config is not None:
        config.save_pretrained(save_directory)
    return path


class MaskMismatchError(ValueError):
    """Raised when saved masks do not fit a model or an expected fingerprint."""


def read_mask_fingerprint(directory: Union[str, os.PathLike]) -> str:
    """Return the fingerprint stored in the header of `directory/tna_mask.safetensors` without unpacking the bits."""
    with safe_open(os.path.join(directory, MASK_NAME), framework="pt") as handle:
        return handle.metadata()["fingerprint"]


def load_masks(
    directory: Union[str, os.PathLike],
    model: Optional[torch.nn.Module] = None,
    config: Optional[TNAConfig] = None,
    expected_fingerprint: Optional[str] = None,
) -> Masks:
    """Load masks saved by `save_masks` and check them.

    Args:
        directory: Folder that contains `tna_mask.safetensors`.
        model: If given, every targeted trainable parameter of the model (by `config`, or by the
            `tna_config.json` beside the masks) must have a mask of its shape, and no mask may lack a parameter.
        config: Config that selects the targeted parameters of `model`; read from `directory` when None.
        expected_fingerprint: If given, the loaded masks must have this fingerprint.

    Returns:
        A dict from parameter name to a CPU bool tensor.

    Raises:
        FileNotFoundError: The mask file is missing.
        MaskMismatchError: The bits do not match the stored fingerprint, or names, shapes or the
            fingerprint do not match `model` / `expected_fingerprint`; the message lists every difference.
    """
    path = os.path.join(directory, MASK_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No {MASK_NAME} in {str(directory)!r}. Save masks with save_masks or MaskedTrainer.save_model."
        )
    try:
        with safe_open(path, framework="pt") as handle:
            header = handle.metadata() or {}
            if header.get("format_version") != _FORMAT_VERSION or _BITS_KEY not in handle.keys():
                raise MaskMismatchError(
                    f"{path} is not a tna_hf mask file (format_version={header.get('format_version')!r}, "
                    f"tensors {sorted(handle.keys())}). Write mask files with save_masks."
                )
            packed = handle.get_tensor(_BITS_KEY).numpy()
        names_and_shapes = json.loads(header["names_and_shapes"])
        stored_fingerprint = header["fingerprint"]
    except (SafetensorError, KeyError, json.JSONDecodeError) as error:
        raise MaskMismatchError(
            f"{path} is not a readable tna_hf mask file ({type(error).__name__}: {error}). "
            "Write it again with save_masks."
        ) from error
    if _fingerprint(names_and_shapes, packed) != stored_fingerprint:
        raise MaskMismatchError(f"{path} is corrupt: its bits do not match the fingerprint in its header.")

    total = sum(int(np.prod(shape)) if shape else 1 for _, shape in names_and_shapes)
    bits = np.unpackbits(packed, count=total).astype(bool)
    masks: Masks = {}
    offset = 0
    for name, shape in names_and_shapes:
        numel = int(np.prod(shape)) if shape else 1
        masks[name] = torch.from_numpy(bits[offset : offset + numel].copy()).view(tuple(shape))
        offset += numel

    if expected_fingerprint is not None and expected_fingerprint != stored_fingerprint:
        raise MaskMismatchError(
            f"Mask fingerprint mismatch for {path}: found {stored_fingerprint}, expected {expected_fingerprint}. "
            "The models were trained with different masks (seed, rho or targeted parameters differ)."
        )
    if model is not None:
        if config is None and os.path.isfile(os.path.join(directory, "tna_config.json")):
            config = TNAConfig.from_pretrained(directory)
        check_masks_match_model(masks, model, config or TNAConfig(), source=path)
    return masks


def check_masks_match_model(
    masks: Mapping[str, torch.Tensor], model: torch.nn.Module, config: TNAConfig, source: str = "masks"
) -> None:
    """Raise `MaskMismatchError` listing every missing, extra and mis-shaped name between `masks` and `model`."""
    params = targeted_parameters(model, config)
    all_params = dict(unwrap_model(model).named_parameters())
    missing = sorted(set(params) - set(masks))
    extra = sorted(name for name in masks if name not in all_params)
    misshaped = sorted(
        f"{name}: mask {tuple(masks[name].shape)} vs parameter {tuple(all_params[name].shape)}"
        for name in masks
        if name in all_params and tuple(masks[name].shape) != tuple(all_params[name].shape)
    )
    problems = []
    if missing:
        problems.append(f"targeted parameters without a mask: {missing}")
    if extra:
        problems.append(f"masks for parameters the model does not have: {extra}")
    if misshaped:
        problems.append(f"shape mismatches: {misshaped}")
    if problems:
        raise MaskMismatchError(
            f"{source} does not fit {type(unwrap_model(model)).__name__}: " + "; ".join(problems) + "."
        )
