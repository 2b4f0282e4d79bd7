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
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tna_hf' has no attribute {name!r}")


__all__ = [
    "MaskedTrainer",
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
