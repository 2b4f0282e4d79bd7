"""tna_hf: training-time neuron alignment (TNA-PFN) for the Hugging Face stack."""

__version__ = "0.1.0"

from .config import MaskMode, MaskSchedule, TNAConfig
from .masks import (
    MaskMismatchError,
    build_masks,
    complement_masks,
    fraction_fixed,
    load_masks,
    mask_fingerprint,
    save_masks,
)
from .update import MaskedUpdate

# Heavier entry points import transformers or the fusion code; load them on first use.
_LAZY = {
    "MaskedTrainer": "tna_hf.trainer",
    "interpolate": "tna_hf.fusion",
    "average_state_dicts": "tna_hf.fusion",
    "uniform_soup": "tna_hf.fusion",
    "greedy_soup": "tna_hf.fusion",
    "GreedySoupReport": "tna_hf.fusion",
    "GreedySoupEntry": "tna_hf.fusion",
    "ProvenanceMismatchError": "tna_hf.fusion",
    "state_dict_fingerprint": "tna_hf.checkpoint",
    "save_initial_checkpoint": "tna_hf.checkpoint",
    "load_initial_checkpoint": "tna_hf.checkpoint",
    "ensure_initial_checkpoint": "tna_hf.checkpoint",
    "save_provenance": "tna_hf.checkpoint",
    "load_provenance": "tna_hf.checkpoint",
    "CheckpointMismatchError": "tna_hf.checkpoint",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tna_hf' has no attribute {name!r}")


__all__ = [
    "CheckpointMismatchError",
    "GreedySoupEntry",
    "GreedySoupReport",
    "MaskedTrainer",
    "ProvenanceMismatchError",
    "ensure_initial_checkpoint",
    "load_initial_checkpoint",
    "load_provenance",
    "save_initial_checkpoint",
    "save_provenance",
    "state_dict_fingerprint",
    "average_state_dicts",
    "greedy_soup",
    "interpolate",
    "uniform_soup",
    "MaskMismatchError",
    "MaskMode",
    "MaskSchedule",
    "MaskedUpdate",
    "TNAConfig",
    "build_masks",
    "complement_masks",
    "fraction_fixed",
    "load_masks",
    "mask_fingerprint",
    "save_masks",
]
