"""A float64 running weighted sum of state dicts, checked name by name, for soups and interpolation.

Floating tensors are summed in float64 (complex ones in complex128) and cast back to their dtype at
the end, as timm's checkpoint averaging does. Integer and boolean buffers are not averaged: they must
be equal in every source, or the first source's value is kept when the caller allows it.

Exactness of identical inputs. For float32, float16 and bfloat16 sources, k copies of a value x sum
to k * x exactly in float64, because k * x needs at most 24 + log2(k) significant bits and float64
has 53. The quotient (k * x) / k is then exactly x. With arbitrary weights the float64 result lies within about
k * 2**-53 of x relatively, far below half a float32 ulp (2**-25 relatively), so the cast back rounds
to x. Entries that are equal in every source, such as TNA-PFN fixed entries, therefore come out
bit-identical. float64 (and complex128) tensors have no wider type to absorb the rounding, so this
class keeps the first such tensor unchanged while every later source is `torch.equal` to it and sums
only once they differ. The sum also starts from the first weighted tensor, not from zeros, so that
-0.0 entries keep their sign.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Iterator
from typing import Optional

import torch

logger = logging.getLogger(__name__)

# Dtypes whose values are kept unchanged while all sources agree (see the module docstring).
_SHORTCUT_DTYPES = (torch.float64, torch.complex128)


class MismatchedIntegerBuffers(str, enum.Enum):
    """Policy for an integer or boolean buffer that differs between sources."""

    ERROR = "error"  # raise ValueError naming the buffer
    FIRST = "first"  # keep the value of the first source


def parse_buffer_policy(value: str | MismatchedIntegerBuffers) -> MismatchedIntegerBuffers:
    try:
        return MismatchedIntegerBuffers(value)
    except ValueError:
        choices = [member.value for member in MismatchedIntegerBuffers]
        raise ValueError(f"mismatched_integer_buffers={value!r} is invalid. Choose one of {choices}.") from None


def _dtype_is_averaged(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point or dtype.is_complex


def _is_averaged(tensor: torch.Tensor) -> bool:
    return _dtype_is_averaged(tensor.dtype)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype.is_complex else torch.float64


class RunningSum:
    """Weighted float64 sum of state dicts that arrive one at a time, with name, shape and buffer checks.

    Memory: one float64 (or complex128) tensor per floating entry, plus the integer buffers of the
    first source. The caller streams each source's tensors through `add`, so at most one source
    needs to be loaded at a time.

    Args:
        mismatched_integer_buffers: `"error"` or `"first"`; see `MismatchedIntegerBuffers`.
        operation: Name of the caller's operation ("soup", "interpolation"), used in error messages.
    """

    def __init__(self, mismatched_integer_buffers: str = "error", operation: str = "average") -> None:
        self.policy = parse_buffer_policy(mismatched_integer_buffers)
        self.operation = operation
        self.total_weight = 0.0
        self.num_sources = 0
        self.first_label: Optional[str] = None
        self._dtypes: dict[str, torch.dtype] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        # Floating entries: the float64 sum, or for _SHORTCUT_DTYPES the shared tensor while `_is_shared`.
        self._values: dict[str, Optional[torch.Tensor]] = {}
        self._is_shared: dict[str, bool] = {}
        self._buffers: dict[str, torch.Tensor] = {}
        self._differing_buffers: set[str] = set()

    @property
    def names(self) -> list[str]:
        """Entry names in the order of the first source."""
        return list(self._shapes)

    # --------------------------------------------------------------------------------------------
    # Checks

    def _checked(self, tensors: Iterable[tuple[str, torch.Tensor]], label: str) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the entries of one source that fit the first source; raise at the end listing all that do not."""
        is_first = self.num_sources == 0
        seen: set[str] = set()
        unexpected: list[str] = []
        problems: list[str] = []
        for name, tensor in tensors:
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"{label}[{name!r}] is a {type(tensor).__name__}, expected a torch.Tensor.")
            if name in seen:
                raise ValueError(f"{label} contains the key {name!r} twice.")
            seen.add(name)
            if is_first:
                self._dtypes[name] = tensor.dtype
                self._shapes[name] = tuple(tensor.shape)
                yield name, tensor
                continue
            if name not in self._shapes:
                unexpected.append(name)
                continue
            if tuple(tensor.shape) != self._shapes[name]:
                problems.append(f"{name}: shape {tuple(tensor.shape)} vs {self._shapes[name]}")
                continue
            if _is_averaged(tensor) != _dtype_is_averaged(self._dtypes[name]):
                problems.append(f"{name}: dtype {tensor.dtype} vs {self._dtypes[name]}")
                continue
            yield name, tensor

        if is_first:
            self.first_label = label
            if not seen:
                raise ValueError(f"{label} is empty: a {self.operation} needs at least one tensor.")
            return
        missing = sorted(set(self._shapes) - seen)
        details = []
        if missing:
            details.append(f"missing keys {missing}")
        if unexpected:
            details.append(f"unexpected keys {sorted(unexpected)}")
        if problems:
            details.append(f"mismatches {sorted(problems)}")
        if details:
            raise ValueError(
                f"{label} does not match {self.first_label}: " + "; ".join(details) + ". "
                f"A {self.operation} needs state dicts of one architecture with the same keys and shapes."
            )

    def _check_buffer(self, name: str, tensor: torch.Tensor, label: str) -> None:
        stored = self._buffers[name]
        if torch.equal(tensor.to(stored.device), stored):
            return
        if self.policy is MismatchedIntegerBuffers.ERROR:
            raise ValueError(
                f"Integer buffer {name!r} ({stored.dtype}) differs between {self.first_label} and {label}; "
                f"integer and boolean buffers cannot be averaged. If the difference is expected (for example "
                f"BatchNorm num_batches_tracked after different step counts), pass "
                f"mismatched_integer_buffers='first' to keep the value of {self.first_label}."
            )
        if name not in self._differing_buffers:
            self._differing_buffers.add(name)
            logger.warning(
                "Integer buffer %r differs between %s and %s; keeping the value of %s "
                "(mismatched_integer_buffers='first').",
                name,
                self.first_label,
                label,
                self.first_label,
            )

    # --------------------------------------------------------------------------------------------
    # Accumulation

    def _start_value(self, name: str, tensor: torch.Tensor, weight: float) -> torch.Tensor:
        if tensor.dtype in _SHORTCUT_DTYPES:
            self._is_shared[name] = True
            return tensor
        self._is_shared[name] = False
        value = tensor.to(_accumulation_dtype(tensor.dtype), copy=True)
        if weight != 1.0:
            value.mul_(weight)
        return value

    def _unshare(self, name: str) -> torch.Tensor:
        # The shared tensor stood for every source so far, so it enters the sum with their total weight.
        value = self._values[name].to(_accumulation_dtype(self._dtypes[name]), copy=True)
        if self.total_weight != 1.0:
            value.mul_(self.total_weight)
        self._is_shared[name] = False
        return value

    def add(self, tensors: Iterable[tuple[str, torch.Tensor]], weight: float, label: str) -> None:
        """Add one source, given as (name, tensor) pairs, with `weight`. A zero weight only checks the source."""
        for name, tensor in self._checked(tensors, label):
            tensor = tensor.detach()
            if not _is_averaged(tensor):
                if name in self._buffers:
                    self._check_buffer(name, tensor, label)
                else:
                    self._buffers[name] = tensor.clone()
                continue
            if weight == 0.0:
                self._values.setdefault(name, None)
                continue

            value = self._values.get(name)
            if value is None:
                self._values[name] = self._start_value(name, tensor, weight)
                continue
            tensor = tensor.to(value.device)
            if self._is_shared[name]:
                if tensor.dtype == value.dtype and torch.equal(tensor, value):
                    continue
                value = self._unshare(name)
            value.add_(tensor, alpha=weight)
            self._values[name] = value

        self.total_weight += float(weight)
        self.num_sources += 1

    # --------------------------------------------------------------------------------------------
    # Results

    def _finish(self, name: str, value: torch.Tensor, total_weight: float, divide: bool) -> torch.Tensor:
        if divide and total_weight != 1.0:
            value = value / total_weight
        return value.to(self._dtypes[name])

    def result(self, divide: bool = True, consume: bool = False) -> dict[str, torch.Tensor]:
        """Return the weighted average (or, with `divide=False`, the weighted sum) cast back to each dtype.

        Args:
            divide: Divide by the total weight. Interpolation passes False because its weights sum to 1.
            consume: Free each float64 sum as soon as its result is built, keeping peak memory near
                one float64 copy of the model. The object cannot be used afterwards.
        """
        if self.num_sources == 0:
            raise ValueError(f"The {self.operation} has no sources.")
        if self.total_weight == 0.0:
            raise ValueError(f"Every source of the {self.operation} has weight 0; give at least one a positive weight.")
        result: dict[str, torch.Tensor] = {}
        for name in self.names:
            if name in self._buffers:
                result[name] = self._buffers[name].clone()
                continue
            value = self._values.pop(name) if consume else self._values[name]
            if self._is_shared[name]:
                result[name] = value.to(self._dtypes[name], copy=True)
            else:
                result[name] = self._finish(name, value, self.total_weight, divide)
            del value
        return result

    def preview_add(
        self, tensors: Iterable[tuple[str, torch.Tensor]], weight: float, label: str
    ) -> dict[str, torch.Tensor]:
        """Return the weighted average that `add(tensors, weight, label)` followed by `result()` would give.

        The running sum is left unchanged, and each float64 intermediate lives only while its entry is
        built. A later `add` of the same source followed by `result()` returns bit-identical tensors.
        Needs at least one source added before, and a positive `weight`.
        """
        if self.num_sources == 0 or self.total_weight <= 0.0 or weight <= 0.0:
            raise ValueError(
                f"preview_add needs at least one added source, a positive total weight and a positive weight, "
                f"got {self.num_sources} sources, total_weight={self.total_weight} and weight={weight}."
            )
        total_weight = self.total_weight + float(weight)
        result: dict[str, torch.Tensor] = {}
        for name, tensor in self._checked(tensors, label):
            tensor = tensor.detach()
            if not _is_averaged(tensor):
                self._check_buffer(name, tensor, label)
                result[name] = self._buffers[name].clone()
                continue

            value = self._values[name]
            tensor = tensor.to(value.device)
            if self._is_shared[name]:
                if tensor.dtype == value.dtype and torch.equal(tensor, value):
                    result[name] = value.to(self._dtypes[name], copy=True)
                    continue
                combined = value.to(_accumulation_dtype(self._dtypes[name]), copy=True)
                if self.total_weight != 1.0:
                    combined.mul_(self.total_weight)
                combined.add_(tensor, alpha=weight)
            else:
                combined = value.add(tensor, alpha=weight)
            result[name] = self._finish(name, combined, total_weight, divide=True)
            del combined
        return result
