"""Keeping fixed entries bit-identical under any torch optimizer (TNA-PFN, Li et al.).

Masking the gradient (equation 5 of the TNA-PFN paper, `w <- w - lr * (m * g)`) is not enough on
its own: coupled weight decay, momentum and Adam's moments still move an entry whose gradient is
zero. `MaskedUpdate` therefore does two things:

1. A tensor hook zeroes the gradient of fixed entries as autograd produces it, before accumulation,
   data-parallel reduction and clipping, so the clip norm is that of the masked gradient and no
   optimizer state builds up on fixed entries.
2. An optimizer step post-hook writes the stored values back into the fixed entries by selection,
   which is exact and NaN-safe, unlike `p * m + init * (1 - m)`.

Both steps are integer bit-selects on the raw bits of a tensor (float32 viewed as int32, bfloat16 as
int16, ...). Per targeted tensor `MaskedUpdate` keeps `keep`, an int8 tensor that is -1 (all bits set)
on trainable entries and 0 on fixed ones, and `fixed_bits`, the bits of the parameter at the last mask
change with trainable entries zeroed:

    gradient hook:  grad_bits & keep                            (fixed entries become +0.0)
    restore:        param_bits &= keep;  param_bits |= fixed_bits

Bitwise operations copy every bit pattern (NaN, inf, -0.0) unchanged, and they are plain elementwise
kernels, so they work for any memory layout (channels_last included) and any device. On the 2-core
development CPU they are 3 to 8 times faster than scattering by index (`index_put_`, `index_copy_`),
and faster than a boolean `torch.where`. The cost is memory: 1 byte (`keep`) plus one element
(`fixed_bits`) per targeted entry, whatever rho is; that is 5 bytes for float32 and 3 bytes for
bfloat16, and 1 byte in `prune` mode, where the fixed values are +0.0 and need no `fixed_bits`. An
index-based layout would need rho * (8 + element size) bytes, less only below rho = 1/3 in float32.
`benchmarks/restore_strategies.py` measures the alternatives.

Why a tensor hook, and why out of place. A hook registered with `Tensor.register_hook` on a leaf runs
before the leaf's `AccumulateGrad` node, so it sees the gradient before it is added to `.grad`. The
DistributedDataParallel reducer hooks in after that node: at that point it copies `.grad` into a
bucket, all-reduces the bucket asynchronously and later writes the averaged bucket back into `.grad`.
Zeroing `.grad` in place from a post-accumulate-grad hook would therefore run after the reducer has
read the unmasked gradient whenever the reducer's hook was registered first (DDP is normally built
before `MaskedUpdate`), and the averaged, unmasked bucket would overwrite the zeros; with
`gradient_as_bucket_view=True` the write would also race with the running all-reduce. The tensor hook
runs on every rank before any of this, so every rank contributes masked gradients. The hook must not
modify its argument, because autograd may hand the same gradient tensor to other consumers (for
`y = x + w` the gradient of `x` and of `w` are one tensor), so it returns a new tensor; when `.grad`
is None, `AccumulateGrad` adopts that tensor without another copy.
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
        raise TypeError(f"Parameter {name!r} has dtype {dtype} ({size} bytes per element); MaskedUpdate supports "
                        "element sizes of 1, 2, 4 and 8 bytes.")
    return _BITS_DTYPES[size]


class _FixedEntries:
    """Bit-select buffers of one targeted parameter, kept on the parameter's device.

    `keep` is int8, -1 on trainable entries and 0 on fixed ones; `fixed_bits` holds the raw bits of the
    parameter at the last mask change with trainable entries zeroed (None in `prune` mode, where every
    fixed entry is +0.0). Both have the parameter's shape and strides.
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

        # empty_like keeps the parameter's strides (channels_last stays channels_last).
        keep = torch.empty_like(param.data, dtype=torch.int8)
        keep.copy_(mask)
        self.keep = keep.neg_()

        param_bits = self.param_bits()
        if prune:
            param_bits.bitwise_and_(self.keep)
        else:
            self.fixed_bits = param_bits & ~self.keep

    def param_bits(self) -> torch.Tensor:
        """Return the parameter's data viewed as integers, moving the buffers if the parameter moved."""
        data = self.param.data
        if data.data_ptr() != self._data_ptr:
            self._follow(data)
        return self._param_bits

    def keep_on(self, device: torch.device) -> torch.Tensor:
        """Return `keep` on `device` (the gradient can reach the hook before `restore` has seen a move)."""
        if self.keep.device != device:
            self.keep = self.keep.to(device)
        return self.keep

    def _follow(self, data: torch.Tensor) -> None:
        # The parameter's storage was replaced, e.g. by `model.to(device)` or `accelerator.prepare` after
        # `set_masks`. Values at fixed entries are restored from `fixed_bits`, so only the dtype must match.
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

    def nbytes(self) -> int:
        held = self.keep.numel() * self.keep.element_size()
        if self.fixed_bits is not None:
            held += self.fixed_bits.numel() * self.fixed_bits.element_size()
        return held


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
        """Bytes of the buffers held for restoring and masking (not counting `masks`, which the caller owns)."""
        return sum(entries.nbytes() for entries in self._entries.values())

    # ------------------------------------------------------------------ hooks

    @staticmethod
    def _make_gradient_hook(entries: _FixedEntries):
        bits_dtype = entries.bits_dtype

        def zero_fixed_gradient(grad: torch.Tensor) -> torch.Tensor:
            if grad.layout != torch.strided:
                raise NotImplementedError(
                    f"Parameter {entries.name!r} received a {grad.layout} gradient; MaskedUpdate masks dense "
                    "gradients only. Use a dense layer (e.g. nn.Embedding(sparse=False)) or exclude the parameter."
                )
            # Out of place, see the module docstring. The int8 `keep` is sign-extended to the bit width.
            return torch.bitwise_and(grad.view(bits_dtype), entries.keep_on(grad.device)).view(grad.dtype)

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

    @torch.no_grad()
    def restore(self) -> None:
        """Write the stored values back into every fixed entry (called after each optimizer step)."""
        for entries in self._entries.values():
            param_bits = entries.param_bits()
            param_bits.bitwise_and_(entries.keep)
            if entries.fixed_bits is not None:
                param_bits.bitwise_or_(entries.fixed_bits)

    @torch.no_grad()
    def zero_fixed_gradients(self) -> None:
        """Zero the gradients of fixed entries in place (the gradient hooks already do this during backward)."""
        for entries in self._entries.values():
            grad = entries.param.grad
            if grad is None:
                continue
            grad.view(entries.bits_dtype).bitwise_and_(entries.keep_on(grad.device))

    @torch.no_grad()
    def verify(self) -> list[str]:
        """Return the names of targeted parameters whose fixed entries differ from the stored values (bitwise)."""
        changed = []
        for name, entries in self._entries.items():
            # Raw bits, because torch.equal treats NaN as unequal to itself.
            current = entries.param_bits() & ~entries.keep
            if entries.fixed_bits is None:
                moved = bool(current.any())
            else:
                moved = not torch.equal(current, entries.fixed_bits)
            if moved:
                changed.append(name)
        return changed
