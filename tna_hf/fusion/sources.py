"""Reading fusion ingredients from memory or disk, and checking that they share one origin.

A source is a state dict (a mapping from name to tensor) or a path. A path is one of:

- a `.safetensors` file, read one tensor at a time;
- a `.bin`, `.pt` or `.pth` file, read with `torch.load(weights_only=True)` (no arbitrary unpickling);
- a directory that contains `model.safetensors`, a Hugging Face sharded `model.safetensors.index.json`,
  or `pytorch_model.bin`, tried in that order.

A directory may also contain `tna_provenance.json` (written by `tna_hf.checkpoint.save_provenance`);
`check_provenance` compares the initial checkpoint and mask fingerprints it records across sources.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Union

import torch
from safetensors import safe_open

from ..checkpoint import PROVENANCE_NAME, Provenance, load_provenance

logger = logging.getLogger(__name__)

StateDictSource = Union[Mapping[str, torch.Tensor], str, os.PathLike]

SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
_DIRECTORY_FILES = ("model.safetensors", SAFETENSORS_INDEX_NAME, "pytorch_model.bin")
_TORCH_SUFFIXES = (".bin", ".pt", ".pth")


class ProvenanceMismatchError(ValueError):
    """Raised in strict mode when ingredients come from different initial checkpoints or masks."""


def is_path_source(source: StateDictSource) -> bool:
    """Return whether `source` is a path (str or os.PathLike) rather than an in-memory state dict."""
    return isinstance(source, (str, os.PathLike))


def describe_source(source: StateDictSource, index: int) -> str:
    """Return a label for messages: the path of a path source, `state_dict[index]` otherwise."""
    return repr(os.fspath(source)) if is_path_source(source) else f"state_dict[{index}]"


def resolve_weight_file(path: Union[str, os.PathLike]) -> str:
    """Return the weight file that a path source points to (for a directory, the first known file in it).

    Raises:
        FileNotFoundError: The path does not exist, or the directory contains no known weight file.
        ValueError: The file has an unsupported suffix.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        for file_name in _DIRECTORY_FILES:
            candidate = os.path.join(path, file_name)
            if os.path.isfile(candidate):
                return candidate
        raise FileNotFoundError(
            f"{path!r} contains none of {list(_DIRECTORY_FILES)}. Point to the weight file instead."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    if path.endswith((".safetensors", ".json")) or path.endswith(_TORCH_SUFFIXES):
        return path
    raise ValueError(
        f"Checkpoint {path!r} has an unsupported suffix; use a .safetensors, {SAFETENSORS_INDEX_NAME}, "
        f"{', '.join(_TORCH_SUFFIXES)} file or a directory that contains one."
    )


def _iter_safetensors(path: str, names: Sequence[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    with safe_open(path, framework="pt", device="cpu") as handle:
        for name in names if names is not None else handle.keys():
            yield name, handle.get_tensor(name)


def _iter_sharded(index_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    with open(index_path, encoding="utf-8") as handle:
        weight_map = json.load(handle).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path!r} has no 'weight_map'; it is not a Hugging Face sharded checkpoint index.")
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        shards.setdefault(shard, []).append(name)
    folder = os.path.dirname(index_path)
    for shard in sorted(shards):
        shard_path = os.path.join(folder, shard)
        if not os.path.isfile(shard_path):
            raise FileNotFoundError(f"Shard {shard_path!r} listed in {index_path!r} is missing.")
        yield from _iter_safetensors(shard_path, shards[shard])


def iter_state_dict(source: StateDictSource) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the (name, tensor) pairs of `source`, reading safetensors files one tensor at a time.

    Consumers that drop each tensor once used (the soups do) keep at most one tensor of a
    safetensors source in memory, plus the pages of the memory-mapped file being read.

    Raises:
        TypeError: `source` is neither a mapping nor a path.
        FileNotFoundError, ValueError: See `resolve_weight_file`.
    """
    if isinstance(source, Mapping):
        yield from source.items()
        return
    if not is_path_source(source):
        raise TypeError(
            f"A fusion source must be a state dict (mapping from name to tensor) or a checkpoint path, "
            f"got {type(source).__name__}. For a model, pass model.state_dict()."
        )
    path = resolve_weight_file(source)
    if path.endswith(".json"):
        yield from _iter_sharded(path)
    elif path.endswith(".safetensors"):
        yield from _iter_safetensors(path)
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{path!r} contains a {type(state_dict).__name__}, expected a state dict.")
        yield from state_dict.items()


def load_state_dict(source: StateDictSource) -> dict[str, torch.Tensor]:
    """Return `source` as a dict (a path is read completely; a mapping is returned as a shallow copy)."""
    return dict(iter_state_dict(source))


def _provenance_of(source: StateDictSource) -> Provenance | None:
    if is_path_source(source) and os.path.isfile(os.path.join(os.fspath(source), PROVENANCE_NAME)):
        return load_provenance(source)
    return None


def _group_labels(values: dict[str, str | None]) -> str:
    groups: dict[str | None, list[str]] = {}
    for label, value in values.items():
        groups.setdefault(value, []).append(label)
    # The first 16 hex digits (64 bits) tell fingerprints apart and keep the message readable.
    return "; ".join(f"{value[:16] if value else 'none'}: {', '.join(labels)}" for value, labels in groups.items())


def check_provenance(
    sources: Sequence[StateDictSource], labels: Sequence[str], strict: bool = False, stacklevel: int = 2
) -> None:
    """Warn (or, with `strict`, raise) when directory sources record different initial checkpoints or masks.

    Only directories that contain `tna_provenance.json` take part. Fusing models that started from
    different initial checkpoints, or trained with different masks, loses the shared permutation
    subspace that TNA-PFN relies on, so the soup is usually much worse than its ingredients.
    When some directory sources have the file and others do not, a warning names the latter in both modes.

    Args:
        sources: The fusion sources.
        labels: One label per source, for messages.
        strict: Raise `ProvenanceMismatchError` on disagreement instead of warning.
        stacklevel: Passed to `warnings.warn` as seen from the caller of this function: 2 points the
            warning at the line that called the caller.

    Raises:
        ProvenanceMismatchError: `strict` is True and the fingerprints disagree.
    """
    records: dict[str, Provenance] = {}
    unrecorded: list[str] = []
    for source, label in zip(sources, labels):
        provenance = _provenance_of(source)
        if provenance is not None:
            records[label] = provenance
        elif is_path_source(source):
            unrecorded.append(label)
    if not records:
        logger.info("No ingredient has a %s, so their shared initialization cannot be checked.", PROVENANCE_NAME)
        return

    problems = []
    init_fingerprints = {label: record.init_fingerprint for label, record in records.items()}
    if len(set(init_fingerprints.values())) > 1:
        problems.append(f"different initial checkpoints ({_group_labels(init_fingerprints)})")
    mask_fingerprints = {label: record.mask_fingerprint for label, record in records.items()}
    if len(set(mask_fingerprints.values())) > 1:
        problems.append(f"different masks ({_group_labels(mask_fingerprints)})")
    if problems:
        message = (
            "Fusion ingredients come from " + " and ".join(problems) + ". Models fuse well only when they start "
            "from one initial checkpoint and train with one mask; fine-tune every ingredient from the same "
            "initial checkpoint (tna_hf.checkpoint.load_initial_checkpoint) and mask."
        )
        if strict:
            raise ProvenanceMismatchError(message)
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)
        logger.warning(message)

    if unrecorded:
        message = (
            f"Ingredients {unrecorded} have no {PROVENANCE_NAME}, so their initial checkpoint and mask cannot be "
            "compared with the others. Record it with tna_hf.checkpoint.save_provenance after training."
        )
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)
        logger.warning(message)
