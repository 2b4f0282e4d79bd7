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

__all__ = [
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
