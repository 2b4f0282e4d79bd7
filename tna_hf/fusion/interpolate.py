"""Linear interpolation between two state dicts, `alpha * w1 + (1 - alpha) * w2`.

This is the path along which linear mode connectivity and the loss and accuracy barriers of
TNA-PFN (Li et al., equations 1 and 2) are measured.
"""

from __future__ import annotations

import math
import numbers

import torch

from ._accumulate import RunningSum
from .sources import StateDictSource, iter_state_dict


def interpolate(
    state_dict_1: StateDictSource,
    state_dict_2: StateDictSource,
    alpha: float,
    mismatched_integer_buffers: str = "error",
) -> dict[str, torch.Tensor]:
    """Compute `alpha * state_dict_1 + (1 - alpha) * state_dict_2` name by name.

    Floating tensors are combined in float64 (complex ones in complex128) and cast back to the dtype
    of `state_dict_1`. `alpha=1` returns `state_dict_1` and `alpha=0` returns `state_dict_2` bit for
    bit, and so does any `alpha` when both inputs are equal. Integer and boolean buffers are not
    interpolated: they must be equal in both inputs.

    Args:
        state_dict_1: A state dict or a checkpoint path (see `tna_hf.fusion.sources`).
        state_dict_2: Same keys and shapes as `state_dict_1`.
        alpha: Weight of `state_dict_1`; any finite number (values outside [0, 1] extrapolate).
        mismatched_integer_buffers: `"error"` raises when an integer or boolean buffer differs, for
            example BatchNorm `num_batches_tracked` after different step counts. `"first"` keeps the
            value of `state_dict_1`.

    Returns:
        A new state dict with the keys of `state_dict_1`, in its order.

    Raises:
        ValueError: `alpha` is not finite, keys or shapes differ, or an integer buffer differs under
            `"error"`; the message names the keys.

    Example:

    ```python
    >>> midpoint = interpolate(model_a.state_dict(), model_b.state_dict(), alpha=0.5)
    >>> model.load_state_dict(midpoint)
    ```
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
        raise ValueError(f"alpha={alpha!r} is invalid; pass a finite number such as 0.5.")
    alpha = float(alpha)

    running = RunningSum(mismatched_integer_buffers, operation="interpolation")
    running.add(iter_state_dict(state_dict_1), alpha, "state_dict_1")
    running.add(iter_state_dict(state_dict_2), 1.0 - alpha, "state_dict_2")
    # The weights sum to 1 in exact arithmetic; dividing by their rounded float sum would only add error.
    return running.result(divide=False, consume=True)
