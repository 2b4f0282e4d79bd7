"""Keeping fixed entries bit-identical under any torch optimizer.

Masking the gradient (equation 5 of the TNA-PFN paper, `w <- w - lr * (m * g)`) is not enough on
its own: coupled weight decay, momentum and Adam's moments still move an entry whose gradient is
zero. `MaskedUpdate` therefore does two things:

1. A tensor hook zeroes the gradient of fixed entries as autograd produces it, before accumulation,
   data-parallel reduction and clipping, so the clip norm is that of the masked gradient and no
   optimizer state builds up on fixed entries.
2. An optimizer step post-hook writes the stored values back into the fixed entries by index
   (`index_put_`), which is exact and NaN-safe, unlike `p * m + init * (1 - m)`.

Memory per targeted entry: for the fixed fraction rho, one int32 index and one value in the
parameter's dtype, e.g. 3.2 bytes per parameter at rho 0.4 in float32.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Optional

import torch

from .config import MaskMode
from .masks import mask_fingerprint, unwrap_model

logger = logging.getLogger(__name__)


def _storage_offsets(logical_index: torch.Tensor, shape: torch.Size, strides: tuple[int, ...]) -> torch.Tensor:
    """Map row-major indices of a tensor of `shape` to element offsets in storage with `strides`."""
    offsets = torch.zeros_like(logical_index, dtype=torch.int64)
    remainder = logical_index.to(torch.int64)
    for size, stride in zip(reversed(shape), reversed(strides)):
        offsets += (remainder % size) * stride
        remainder = remainder // size
    return offsets.to(logical_index.dtype)


def _is_dense(tensor: torch.Tensor) -> bool:
    """Whether `tensor` covers its storage span without gaps or overlaps (contiguous, channels_last, ...)."""
    if tensor.is_contiguous():
        return True
    span = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()) if size > 0)
    return span == tensor.numel() and len(set(s for s, n in zip(tensor.stride(), tensor.shape) if n > 1)) == sum(
        n > 1 for n in tensor.shape
    )


def _flat_storage_view(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.as_strided((tensor.numel(),), (1,), tensor.storage_offset())


class _FixedEntries:
    """The fixed entries of one parameter: their row-major indices and their stored values."""

    def __init__(self, param: torch.nn.Parameter, mask: torch.Tensor):
        index_dtype = torch.int32 if param.numel() < 2**31 else torch.int64
        self.index = (~mask).reshape(-1).nonzero().squeeze(1).to(device=param.device, dtype=index_dtype)
        self._offsets_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self.values: Optional[torch.Tensor] = None

    def offsets(self, tensor: torch.Tensor) -> torch.Tensor:
        """Storage offsets of the fixed entries in `tensor`, which has the parameter's shape."""
        if tensor.is_contiguous():
            index = self.index
        else:
            strides = tuple(tensor.stride())
            index = self._offsets_cache.get(strides)
            if index is None:
                index = _storage_offsets(self.index, tensor.shape, strides)
                self._offsets_cache[strides] = index
        if index.device != tensor.device:
            # The model moved (e.g. `accelerator.prepare` after attach): follow it once.
            self.index = self.index.to(tensor.device)
            self._offsets_cache = {key: value.to(tensor.device) for key, value in self._offsets_cache.items()}
            return self.offsets(tensor)
        return index


class MaskedUpdate:
    """Keep the fixed entries of a model's targeted parameters bit-identical through training.

    Args:
        model: The model being trained (DistributedDataParallel wrappers are unwrapped).
        masks: Parameter name -> bool tensor (`True` = trainable), e.g. from `build_masks`.
        mode: `"fix"` keeps fixed entries at their value now; `"prune"` sets them to zero now.

    Example:

    ```python
    >>> masks = build_masks(model, TNAConfig(rho=0.4))
    >>> optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    >>> masked_update = MaskedUpdate(model, masks).attach(optimizer)
    >>> loss.backward(); optimizer.step()  # fixed entries unchanged, bit for bit
    ```
    """

    def __init__(self, model: torch.nn.Module, masks: Mapping[str, torch.Tensor], mode: str = MaskMode.FIX.value):
        self.model = unwrap_model(model)
        self._all_params = dict(self.model.named_parameters())
        self._entries: dict[str, _FixedEntries] = {}
        self._hook_handles: list = []
        # Kept apart from the gradient hooks so that `set_masks` (which replaces those) keeps restoring.
        self._step_hook_handles: list = []
        self._optimizers: list[torch.optim.Optimizer] = []
        self.set_masks(masks, mode=mode)

    # ------------------------------------------------------------------ masks

    def set_masks(self, masks: Mapping[str, torch.Tensor], mode: str = MaskMode.FIX.value) -> "MaskedUpdate":
        """Replace the masks and snapshot the current values of the newly fixed entries.

        Use this at a mask change (a new FedPFN round, FedPNU's complement): whatever optimizer state was
        gathered under the old mask, entries fixed under the new mask stay at their value at this call.
        """
        if mode not in (MaskMode.FIX.value, MaskMode.PRUNE.value):
            raise ValueError(f"MaskedUpdate mode must be 'fix' or 'prune', got {mode!r}.")
        problems = []
        for name, mask in masks.items():
            if name not in self._all_params:
                problems.append(f"{name!r} is not a parameter of the model")
            elif tuple(mask.shape) != tuple(self._all_params[name].shape):
                problems.append(
                    f"{name!r} has mask shape {tuple(mask.shape)} but parameter shape "
                    f"{tuple(self._all_params[name].shape)}"
                )
            elif mask.dtype != torch.bool:
                problems.append(f"{name!r} has mask dtype {mask.dtype}; masks must be torch.bool")
        if problems:
            raise ValueError("Masks do not fit the model: " + "; ".join(problems) + ".")

        self.remove_gradient_hooks()
        self.mode = mode
        self.masks = {name: mask.detach().to("cpu") for name, mask in masks.items()}
        self.fingerprint = mask_fingerprint(self.masks)
        self._entries = {}
        for name, mask in self.masks.items():
            param = self._all_params[name]
            entries = _FixedEntries(param, mask)
            with torch.no_grad():
                flat = _flat_storage_view(param.data) if _is_dense(param.data) else None
                if flat is None:
                    raise ValueError(f"Parameter {name!r} is not dense in memory (strides {param.stride()}).")
                offsets = entries.offsets(param.data)
                if mode == MaskMode.PRUNE.value:
                    flat.index_put_((offsets,), torch.zeros((), dtype=param.dtype, device=param.device))
                entries.values = flat[offsets.long()].clone()
            self._entries[name] = entries
            if param.requires_grad and len(entries.index):
                self._hook_handles.append(param.register_hook(self._make_gradient_hook(entries)))
        return self

    def num_fixed(self) -> int:
        return sum(len(entries.index) for entries in self._entries.values())

    def fraction_fixed(self) -> float:
        total = sum(mask.numel() for mask in self.masks.values())
        return self.num_fixed() / total if total else 0.0

    # ------------------------------------------------------------------ hooks

    @staticmethod
    def _make_gradient_hook(entries: _FixedEntries):
        def zero_fixed_gradient(grad: torch.Tensor) -> torch.Tensor:
            # Out of place: autograd hooks must not modify their argument.
            if not _is_dense(grad):
                grad = grad.contiguous()
            masked = grad.clone()
            _flat_storage_view(masked).index_put_(
                (entries.offsets(masked),), torch.zeros((), dtype=grad.dtype, device=grad.device)
            )
            return masked

        return zero_fixed_gradient

    def remove_gradient_hooks(self) -> None:
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles = []

    def attach(self, optimizer: torch.optim.Optimizer) -> "MaskedUpdate":
        """Restore the fixed entries after every `optimizer.step()`. Returns `self`.

        Accepts a `torch.optim.Optimizer` or a wrapper with an `.optimizer` attribute (accelerate, Trainer).
        """
        base = optimizer
        # accelerate's AcceleratedOptimizer subclasses Optimizer but keeps its own (empty) hook tables.
        while hasattr(base, "optimizer") and base.optimizer is not base:
            base = base.optimizer
        if not isinstance(base, torch.optim.Optimizer):
            raise TypeError(f"attach expects a torch.optim.Optimizer, got {type(optimizer).__name__}.")
        if any(base is known for known in self._optimizers):
            return self
        self._step_hook_handles.append(base.register_step_post_hook(lambda *_: self.restore()))
        self._optimizers.append(base)
        return self

    def detach(self) -> None:
        """Remove every hook this object registered; parameters keep their current values."""
        self.remove_gradient_hooks()
        for handle in self._step_hook_handles:
            handle.remove()
        self._step_hook_handles = []
        self._optimizers = []

    @torch.no_grad()
    def restore(self) -> None:
        """Write the stored values back into every fixed entry (called after each optimizer step)."""
        for name, entries in self._entries.items():
            if not len(entries.index):
                continue
            param = self._all_params[name].data
            if entries.values.device != param.device:
                entries.values = entries.values.to(param.device)
            _flat_storage_view(param).index_put_((entries.offsets(param),), entries.values)

    @torch.no_grad()
    def zero_fixed_gradients(self) -> None:
        """Zero the gradients of fixed entries in place (the gradient hooks already do this during backward)."""
        for name, entries in self._entries.items():
            grad = self._all_params[name].grad
            if grad is None or not len(entries.index):
                continue
            _flat_storage_view(grad).index_put_(
                (entries.offsets(grad),), torch.zeros((), dtype=grad.dtype, device=grad.device)
            )

    @torch.no_grad()
    def verify(self) -> list[str]:
        """Return the names of targeted parameters whose fixed entries differ from the stored values (bitwise)."""
        changed = []
        for name, entries in self._entries.items():
            if not len(entries.index):
                continue
            param = self._all_params[name].data
            current = _flat_storage_view(param)[entries.offsets(param).long()]
            stored = entries.values.to(param.device)
            # Compare raw bits: torch.equal treats NaN as unequal to itself.
            if not torch.equal(_as_bits(current), _as_bits(stored)):
                changed.append(name)
        return changed


def _as_bits(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype.is_floating_point:
        bits_dtype = {2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
        return tensor.view(bits_dtype)
    return tensor
