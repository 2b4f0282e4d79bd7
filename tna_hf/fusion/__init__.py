"""Model fusion on state dicts: interpolation, weighted averages, uniform and greedy model soups.

Every function works on state dicts keyed by parameter name, for any architecture, and also accepts
checkpoint paths (see `tna_hf.fusion.sources`). Floating tensors are combined in float64 and cast
back; integer and boolean buffers must be equal across models.
"""

from ._accumulate import MismatchedIntegerBuffers
from .interpolate import interpolate
from .soup import GreedySoupEntry, GreedySoupReport, average_state_dicts, greedy_soup, uniform_soup
from .sources import ProvenanceMismatchError, check_provenance, iter_state_dict, load_state_dict

__all__ = [
    "GreedySoupEntry",
    "GreedySoupReport",
    "MismatchedIntegerBuffers",
    "ProvenanceMismatchError",
    "average_state_dicts",
    "check_provenance",
    "greedy_soup",
    "interpolate",
    "iter_state_dict",
    "load_state_dict",
    "uniform_soup",
]
from .cold import ColdFusion, ColdFusionVariant, Contributor, variant_tna_config  # noqa: E402, F401  (ColD fusion rounds)
