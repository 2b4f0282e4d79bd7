"""`TNAConfig`: the settings of training-time neuron alignment with partially fixed neurons.

TNA-PFN (Li et al., "Training-time Neuron Alignment through Permutation Subspace for
Improving Linear Mode Connectivity and Model Fusion") keeps a random fraction `rho` of
every targeted weight tensor at its initial value during training (`mode="fix"`), or at
zero (`mode="prune"`, random pruning at initialization).
"""

from __future__ import annotations

import enum
import json
import logging
import numbers
import os
import re
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

logger = logging.getLogger(__name__)

CONFIG_NAME = "tna_config.json"


class MaskMode(str, enum.Enum):
    """Treatment of the fixed entries of a targeted tensor."""

    FIX = "fix"  # TNA-PFN: fixed entries keep their value at attach time
    PRUNE = "prune"  # pruning at initialization: fixed entries are set to zero and stay zero


class MaskSchedule(str, enum.Enum):
    """Rule for changing the mask across the rounds of multi-round training (federated, ColD fusion)."""

    FIXED = "fixed"  # one mask for every round (TNA-PFN, "FedPFN (fixed)")
    PER_ROUND = "per_round"  # a new mask every round (FedPFN)
    PROGRESSIVE = "progressive"  # a new mask every round, its complement for the second half (FedPNU)


def _enum_values(enum_type: type[enum.Enum]) -> list[str]:
    return [member.value for member in enum_type]


@dataclass
class TNAConfig:
    """Configuration of TNA-PFN masks.

    Example:

    ```python
    >>> from tna_hf import TNAConfig
    >>> config = TNAConfig(rho=0.4, seed=0)
    >>> config.save_pretrained("out")  # writes out/tna_config.json
    >>> TNAConfig.from_pretrained("out") == config
    True
    ```
    """

    rho: float = field(
        default=0.4,
        metadata={"help": "Mask ratio: fraction of every targeted tensor's entries that are fixed (0 <= rho < 1)."},
    )
    seed: int = field(
        default=0,
        metadata={"help": "Seed of the mask. Models fused together must share it (a non-negative integer)."},
    )
    mode: str = field(
        default=MaskMode.FIX.value,
        metadata={"help": "'fix' keeps fixed entries at their initial value (TNA-PFN); 'prune' sets them to zero."},
    )
    target_patterns: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Regular expressions searched in parameter names; a trainable parameter is targeted when one "
            "matches. None targets every trainable parameter."
        },
    )
    exclude_patterns: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Regular expressions searched in parameter names; a matching parameter is never targeted."},
    )
    schedule: str = field(
        default=MaskSchedule.FIXED.value,
        metadata={
            "help": "Mask schedule over rounds: 'fixed' (one mask), 'per_round' (FedPFN) or 'progressive' (FedPNU)."
        },
    )

    def __post_init__(self) -> None:
        # Normalize first (enums and tuples from callers), then validate.
        if isinstance(self.mode, MaskMode):
            self.mode = self.mode.value
        if isinstance(self.schedule, MaskSchedule):
            self.schedule = self.schedule.value
        if isinstance(self.target_patterns, str):
            self.target_patterns = [self.target_patterns]
        if isinstance(self.exclude_patterns, str):
            self.exclude_patterns = [self.exclude_patterns]
        if self.target_patterns is not None:
            self.target_patterns = list(self.target_patterns)
        if self.exclude_patterns is not None:
            self.exclude_patterns = list(self.exclude_patterns)

        if isinstance(self.rho, bool) or not isinstance(self.rho, numbers.Real):
            raise TypeError(f"TNAConfig.rho must be a number in [0, 1), got {self.rho!r}.")
        self.rho = float(self.rho)
        if not 0.0 <= self.rho < 1.0:  # also rejects NaN
            raise ValueError(
                f"TNAConfig.rho must satisfy 0 <= rho < 1, got {self.rho}. "
                "Use 0 for vanilla training; the paper's default is 0.4."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ValueError(f"TNAConfig.seed must be a non-negative integer, got {self.seed!r}.")
        self.seed = int(self.seed)
        if self.mode not in _enum_values(MaskMode):
            raise ValueError(f"TNAConfig.mode must be one of {_enum_values(MaskMode)}, got {self.mode!r}.")
        if self.schedule not in _enum_values(MaskSchedule):
            raise ValueError(
                f"TNAConfig.schedule must be one of {_enum_values(MaskSchedule)}, got {self.schedule!r}."
            )
        for name in ("target_patterns", "exclude_patterns"):
            for pattern in getattr(self, name) or []:
                if not isinstance(pattern, str):
                    raise TypeError(f"TNAConfig.{name} must hold strings, got {pattern!r}.")
                try:
                    re.compile(pattern)
                except re.error as error:
                    raise ValueError(
                        f"TNAConfig.{name} holds an invalid regular expression {pattern!r}: {error}."
                    ) from error

    def is_targeted(self, name: str) -> bool:
        """Return whether the parameter called `name` is targeted by the patterns (trainability aside)."""
        if self.exclude_patterns and any(re.search(pattern, name) for pattern in self.exclude_patterns):
            return False
        if self.target_patterns is None:
            return True
        return any(re.search(pattern, name) for pattern in self.target_patterns)

    def to_dict(self) -> dict:
        return asdict(self)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write `tna_config.json` (sorted keys, stamped with the library version) into `save_directory`.

        The file is written to a temporary name and renamed, so an existing config is never half-written.
        Returns the path of the written file.
        """
        from tna_hf import __version__

        os.makedirs(save_directory, exist_ok=True)
        payload = {**self.to_dict(), "tna_hf_version": __version__}
        path = os.path.join(save_directory, CONFIG_NAME)
        tmp_path = path + ".tmp"
        with open(tmp_path, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp_path, path)
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "TNAConfig":
        """Load a config saved by `save_pretrained`; unknown keys are dropped with a warning."""
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No {CONFIG_NAME} found in {str(directory)!r}. Save one with TNAConfig.save_pretrained "
                "or MaskedTrainer.save_model."
            )
        with open(path, encoding="utf-8") as handle:
            try:
                payload = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON ({error}). Write it again with save_pretrained.") from error
        if not isinstance(payload, dict):
            raise ValueError(f"{path} must contain a JSON object, got {type(payload).__name__}.")
        payload.pop("tna_hf_version", None)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            warnings.warn(
                f"Ignoring unknown keys {unknown} in {path}; they may come from a newer tna_hf version.",
                stacklevel=2,
            )
        return cls(**{key: value for key, value in payload.items() if key in known})
