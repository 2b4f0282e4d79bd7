"""Keeping fixed entries bit-identical under any torch optimizer (TNA-PFN, Li et al.).

Masking the gradient (equation 5 of the TNA-PFN paper, `w <- w - lr * (m * g)`) is not enough on
its own: coupled weight decay, momentum and Adam's moments still move an entry whose gradient is
zero. `MaskedUpdate` therefore does two things:

1. A tensor hook zeroes the gradient of fixed entries as autograd produces it, before accumulation,
   data-parallel reduction and clipping, so the clip norm is that of the masked gradient and no
   optimizer state builds up on fixed entries.
2. An optimizer step post-hook writes the stored values back into the fixed entries by selection,
   which is exact and NaN-safe, unlike `p * m + init * (1 - m)`.

Both steps select on the raw bits of a tensor (float32 viewed as int32, bfloat16 as int16, ...) with
integer arithmetic, which copies every bit pattern (NaN, inf, -0.0) unchanged. Per targeted tensor
`MaskedUpdate` keeps `keep`, the bool mask (1 on trainable entries, 0 on fixed ones), and
`fixed_bits`, the bits of the parameter at the last mask change with trainable entries zeroed:

    gradient hook:  grad_bits * keep                    (fixed entries become +0.0)
    restore:        param_bits = fixed_bits + param_bits * keep      (one `addcmul` per tensor)

These are plain elementwise kernels, so they work for any memory layout (channels_last included) and
any device. On the 2-core development CPU they add 3 to 5 times less to an MLP step than scattering by
index (`index_put_`) or a boolean `torch.where`. `benchmarks/restore_strategies.py` measures the
alternatives, and `docs/benchmarks.md` records the numbers. The memory cost is 1 byte (`keep`) plus
one element (`fixed_bits`) per targeted entry, whatever rho is. That is 5 bytes for float32 and
3 bytes for bfloat16. In `prune` mode the fixed values are +0.0, so only `keep` is stored. An
index-based layout would need rho * (8 + element size) bytes, which is less only below rho = 1/3 in
float32.

Why a tensor hook that returns a new tensor. A hook registered with `Tensor.register_hook` on a leaf
runs before the leaf's `AccumulateGrad` node adds the gradient to `.grad`, so it runs before anything
that reads `.grad` during backward. It must not modify its argument, because autograd may pass the same
gradient tensor to other consumers (for `y = x + w` the gradients of `x` and `w` are one tensor). The
new tensor costs an allocation per parameter and step, but when `.grad` is None `AccumulateGrad`
adopts it without another copy.

Zeroing `.grad` in place from `register_post_accumulate_grad_hook` would avoid that allocation, and
it would run early enough for the default C++ DDP reducer, which `AccumulateGrad` calls after all
post-accumulate-grad hooks (torch 2.x, `accumulate_grad.cpp`). It is still unsafe because those hooks
run in registration order. DDP's Python reducer (used with compiled autograd) registers one when DDP
wraps the model, usually before `MaskedUpdate` exists (`accelerator.prepare`). The reducer would then
pass unmasked gradients to its communication hook, and a compressing hook such as PowerSGD mixes the
gradients of fixed entries into those of trainable ones. An optimizer-in-backward hook registered
earlier would likewise step on unmasked gradients. The tensor hook runs before all of them, whatever
the registration order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Optional

import torch

from .config import MaskMode
from .masks import mask_fingerprint, unwrap_model

logger = logging.getLogger(__name__)

# Integer dtype with the element size of a floating dtype, for viewing raw bits.
_BITS_DTYPES = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits_dtype(dtype: torch.dtype, name: str) -> torch.dtype:
    size = torch.empty((), dtype=dtype).element_size()
    if size not in _BITS_DTYPES:
        raise TypeError(
            f"Parameter {name!r} has dtype {dtype} ({size} bytes per element); MaskedUpdate supports "
            "element sizes of 1, 2, 4 and 8 bytes."
        )
    return _BITS_DTYPES[size]


class _FixedEntries:
    """Select buffers of one targeted parameter, kept on the parameter's device.

    `keep` is the bool mask (`True` = trainable) in the parameter's memory layout. `fixed_bits` contains
    the raw bits of the parameter at the last mask change with trainable entries zeroed. It is None in
    `prune` mode, where every fixed entry is +0.0.
    """

    __slots__ = ("name", "param", "dtype", "bits_dtype", "num_fixed", "keep", "fixed_bits", "_param_bits", "_data_ptr")

    def __init__(self, name: str, param: torch.nn.Parameter, mask: torch.Tensor, prune: bool):
        self.name = name
        self.param = param
        self.dtype = param.dtype
        self.bits_dtype = _bits_dtype(param.dtype, name)
        self.num_fixed = mask.numel() - int(mask.sum())
        self._data_ptr = -1
        self._param_bits: Optional[torch.Tensor] = None
        self.fixed_bits: Optional[torch.Tensor] = None

        # A private copy, so that later in-place changes to the caller's mask cannot change the masking.
        # It has the parameter's device and layout, so that the kernels walk both tensors alike.
        self.keep = torch.empty_like(param.data, dtype=torch.bool).copy_(mask)

        param_bits = self.param_bits()
        if prune:
            param_bits.mul_(self.keep)
        else:
            self.fixed_bits = param_bits * ~self.keep

    def param_bits(self) -> torch.Tensor:
        """Return the parameter's data viewed as integers, moving the buffers if the parameter moved."""
        data = self.param.data
        if data.data_ptr() != self._data_ptr:
            self._follow(data)
        return self._param_bits

    def _follow(self, data: torch.Tensor) -> None:
        # The parameter's storage was replaced, e.g. by `model.to(device)` or `accelerator.prepare` after
        # `set_masks`. Values at fixed entries are restored from `fixed_bits`, so only dtype and shape matter.
        if data.dtype != self.dtype or data.shape != self.keep.shape:
            raise RuntimeError(
                f"Parameter {self.name!r} changed from {self.dtype} {tuple(self.keep.shape)} to {data.dtype} "
                f"{tuple(data.shape)} after its mask was set; call MaskedUpdate.set_masks again after casting it."
            )
        self.keep = self.keep.to(data.device)
        if self.fixed_bits is not None:
            self.fixed_bits = self.fixed_bits.to(data.device)
        self._param_bits = data.view(self.bits_dtype)
        self._data_ptr = data.data_ptr()

    def masked_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """Return a copy of `grad` with fixed entries set to +0.0 (the slow path of the gradient hook)."""
        if grad.layout != torch.strided:
            raise NotImplementedError(
                f"Parameter {self.name!r} received a {grad.layout} gradient; MaskedUpdate masks dense "
                "gradients only. Use a dense layer (e.g. nn.Embedding(sparse=False)) or exclude the parameter."
            )
        if grad.dtype != self.dtype:
            raise RuntimeError(
                f"Parameter {self.name!r} changed from {self.dtype} to {grad.dtype} after its mask was set; "
                "call MaskedUpdate.set_masks again after casting it."
            )
        if self.keep.device != grad.device:
            self.keep = self.keep.to(grad.device)
        return torch.mul(grad.view(self.bits_dtype), self.keep).view(grad.dtype)

    def nbytes(self) -> int:
        """Return the bytes of `keep` and `fixed_bits`."""
        total = self.keep.numel() * self.keep.element_size()
        if self.fixed_bits is not None:
            total += self.fixed_bits.numel() * self.fixed_bits.element_size()
        return total


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

        # Tensors without fixed entries (rho 0, tiny tensors) get no buffers and no hooks.
        self._entries = {}
        self._restore_pointers: list[int] = []
        self._restore_cache: list[tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]] = []
        with torch.no_grad():
            for name, mask in self.masks.items():
                if bool(mask.all()):
                    continue
                param = self._all_params[name]
                entries = _FixedEntries(name, param, mask, prune=mode == MaskMode.PRUNE.value)
                self._entries[name] = entries
                if param.requires_grad:
                    self._hook_handles.append(param.register_hook(self._make_gradient_hook(entries)))
        return self

    def num_fixed(self) -> int:
        """Return the number of fixed entries over all targeted parameters."""
        return sum(entries.num_fixed for entries in self._entries.values())

    def fraction_fixed(self) -> float:
        """Return the fraction of targeted entries that are fixed."""
        total = sum(mask.numel() for mask in self.masks.values())
        return self.num_fixed() / total if total else 0.0

    def _buffer_nbytes(self) -> int:
        """Return the bytes of the select buffers (`keep` and `fixed_bits`)."""
        return sum(entries.nbytes() for entries in self._entries.values())

    # ------------------------------------------------------------------ hooks

    @staticmethod
    def _make_gradient_hook(entries: _FixedEntries):
        bits_dtype = entries.bits_dtype

        def zero_fixed_gradient(grad: torch.Tensor) -> torch.Tensor:
            # Out of place, see the module docstring. The fast path has no checks: a sparse gradient or a
            # `keep` on another device (the model moved after `set_masks`) makes it raise, and the slow path
            # then handles the case or raises a clear error.
            try:
                return torch.mul(grad.view(bits_dtype), entries.keep).view(grad.dtype)
            except RuntimeError:
                return entries.masked_gradient(grad)

        return zero_fixed_gradient

    def remove_gradient_hooks(self) -> None:
        """Remove the gradient hooks (the optimizer hooks stay)."""
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

    def _restore_items(self) -> list[tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]:
        """Return (param_bits, keep, fixed_bits) per entry, rebuilt when a parameter's storage was replaced."""
        pointers = [entries.param.data_ptr() for entries in self._entries.values()]
        if pointers != self._restore_pointers:
            self._restore_cache = [
                (entries.param_bits(), entries.keep, entries.fixed_bits) for entries in self._entries.values()
            ]
            self._restore_pointers = pointers
        return self._restore_cache

    @torch.no_grad()
    def restore(self) -> None:
        """Write the stored values back into every fixed entry (called after each optimizer step)."""
        # Integer arithmetic on the raw bits is an exact select: fixed_bits + bits * keep keeps the bits
        # of trainable entries and puts back the stored bits of fixed ones. `addcmul` does it in one pass
        # over the parameter, which is faster than `_foreach_mul_` then `_foreach_add_` once the
        # parameters no longer fit in cache (measured in benchmarks/restore_strategies.py).
        for bits, keep, fixed_bits in self._restore_items():
            if fixed_bits is None:
                bits.mul_(keep)
            else:
                torch.addcmul(fixed_bits, bits, keep, out=bits)

    @torch.no_grad()
    def zero_fixed_gradients(self) -> None:
        """Zero the gradients of fixed entries in place (the gradient hooks already do this during backward)."""
        for entries in self._entries.values():
            grad = entries.param.grad
            if grad is None:
                continue
            if entries.keep.device != grad.device:
                entries.keep = entries.keep.to(grad.device)
            grad.view(entries.bits_dtype).mul_(entries.keep)

    @torch.no_grad()
    def verify(self) -> list[str]:
        """Return the names of targeted parameters whose fixed entries differ from the stored values (bitwise)."""
        changed = []
        for name, entries in self._entries.items():
            # Raw bits, because torch.equal treats NaN as unequal to itself.
            current = entries.param_bits() * ~entries.keep
            if entries.fixed_bits is None:
                moved = bool(current.any())
            else:
                moved = not torch.equal(current, entries.fixed_bits)
            if moved:
                changed.append(name)
        return changed
