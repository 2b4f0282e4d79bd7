"""Ways to keep TNA-PFN's fixed entries fixed, timed against an unmasked AdamW training step.

Two comparisons, each measured interleaved in one process: the arms alternate block by block, and the
script reports medians of process CPU time (of wall time on CUDA). Each arm is a full training step
with fused AdamW.

* restore strategies, run after every optimizer step (no gradient hook, so only the restore differs):

  | strategy | stored per targeted entry (float32, rho 0.4) | operation |
  | --- | --- | --- |
  | `where_bool` | 1 B mask + 4 B initial value | `torch.where(keep, p, init, out=p)` |
  | `index_copy_int64` | 0.4 * (8 B index + 4 B value) | `flat.index_copy_(0, index, values)` |
  | `index_put_int32` | 0.4 * (4 B index + 4 B value) | `flat.index_put_((index,), values)` |
  | `masked_scatter` | 1 B mask + 0.4 * 4 B value | `p.masked_scatter_(~keep, values)` |
  | `bool_indexing` | 1 B mask + 0.4 * 4 B value | `p[~keep] = values` |
  | `flat_buffer_index_copy` | as `index_copy_int64` | parameters re-pointed into one flat buffer, one `index_copy_` |
  | `foreach_bits_int32` | 4 B int32 keep + 4 B bits | `_foreach_mul_` / `_foreach_add_` on raw bits |
  | `foreach_bits_bool` | 1 B bool keep + 4 B bits | the same with the bool mask as `keep` |
  | `masked_update` | 1 B bool keep + 4 B bits | `MaskedUpdate.restore`: one `addcmul` per tensor on raw bits |

  torch has no `_foreach` bitwise kernels, so the `_foreach` strategies select with integer arithmetic
  on the raw bits (`bits * keep + fixed_bits`), which is exact because `keep` is 0 or 1.

* gradient-hook strategies, with no restore so that only the hook differs:

  | strategy | operation |
  | --- | --- |
  | `clone_index_put` | clone, then `index_put_` zeros at int32 indices |
  | `where_scalar` | `torch.where(keep, g, 0)` |
  | `mul_bits_bool` | `g_bits * keep` with the bool mask, a new tensor (what `MaskedUpdate` does) |
  | `mul_bits_int32` | the same with an int32 `keep` |
  | `post_accumulate_in_place` | zero `.grad` in place from `register_post_accumulate_grad_hook` |

  The last one needs no new tensor, but `MaskedUpdate` does not use it: its module docstring says why.

Usage:

    .venv/bin/python benchmarks/restore_strategies.py --models mlp roberta
"""

# ruff: noqa: T201
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import (  # noqa: E402
    BUILDERS,
    ModelCase,
    interleaved_times,
    make_adamw,
    masked_copy,
    summarize,
    train_step,
    write_json_atomic,
)

from tna_hf import MaskedUpdate  # noqa: E402

_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    if not tensor.is_contiguous():
        raise ValueError("The index strategies of this benchmark need contiguous parameters.")
    return tensor.view(-1)


class RestoreStrategy:
    """Stores what one strategy needs at construction and writes it back in `restore`."""

    def __init__(self, model: torch.nn.Module, masks: dict):
        self.items = [
            (param, masks[name].to(param.device)) for name, param in model.named_parameters() if name in masks
        ]
        self.initial_bits = [param.detach().clone().view(_BITS[param.element_size()]) for param, _ in self.items]

    def restore(self) -> None:
        raise NotImplementedError

    def is_exact(self) -> bool:
        """Return whether every fixed entry has the bits it had at construction."""
        for (param, mask), initial in zip(self.items, self.initial_bits):
            current = param.detach().view(initial.dtype)
            if not torch.equal(current[~mask], initial[~mask]):
                return False
        return True


class WhereBool(RestoreStrategy):
    def __init__(self, model, masks):
        super().__init__(model, masks)
        self.stored = [(param.data, mask, param.detach().clone()) for param, mask in self.items]

    @torch.no_grad()
    def restore(self):
        for data, keep, initial in self.stored:
            torch.where(keep, data, initial, out=data)


class IndexCopyInt64(RestoreStrategy):
    def __init__(self, model, masks):
        super().__init__(model, masks)
        self.stored = []
        for param, mask in self.items:
            index = (~mask).reshape(-1).nonzero().squeeze(1)
            self.stored.append((_flat(param.data), index, _flat(param.data)[index].clone()))

    @torch.no_grad()
    def restore(self):
        for flat, index, values in self.stored:
            flat.index_copy_(0, index, values)


class IndexPutInt32(IndexCopyInt64):
    def __init__(self, model, masks):
        super().__init__(model, masks)
        self.stored = [(flat, index.to(torch.int32), values) for flat, index, values in self.stored]

    @torch.no_grad()
    def restore(self):
        for flat, index, values in self.stored:
            flat.index_put_((index,), values)


class MaskedScatter(RestoreStrategy):
    def __init__(self, model, masks):
        super().__init__(model, masks)
        self.stored = [(param.data, ~mask, param.detach()[~mask].clone()) for param, mask in self.items]

    @torch.no_grad()
    def restore(self):
        for data, fixed, values in self.stored:
            data.masked_scatter_(fixed, values)


class BoolIndexing(MaskedScatter):
    @torch.no_grad()
    def restore(self):
        for data, fixed, values in self.stored:
            data[fixed] = values


class FlatBufferIndexCopy(RestoreStrategy):
    """Re-point every targeted parameter into one flat buffer, so one `index_copy_` restores them all."""

    def __init__(self, model, masks):
        super().__init__(model, masks)
        dtypes = {param.dtype for param, _ in self.items}
        if len(dtypes) != 1:
            raise ValueError(f"flat_buffer_index_copy needs one parameter dtype, found {sorted(map(str, dtypes))}.")
        total = sum(param.numel() for param, _ in self.items)
        self.buffer = torch.empty(total, dtype=dtypes.pop(), device=self.items[0][0].device)
        indices, offset = [], 0
        with torch.no_grad():
            for param, mask in self.items:
                view = self.buffer[offset : offset + param.numel()]
                view.copy_(param.detach().reshape(-1))
                param.data = view.view_as(param)
                indices.append((~mask).reshape(-1).nonzero().squeeze(1) + offset)
                offset += param.numel()
        self.index = torch.cat(indices)
        self.values = self.buffer[self.index].clone()

    @torch.no_grad()
    def restore(self):
        self.buffer.index_copy_(0, self.index, self.values)


class ForeachBitsInt32(RestoreStrategy):
    def __init__(self, model, masks):
        super().__init__(model, masks)
        self.bits = [param.data.view(_BITS[param.element_size()]) for param, _ in self.items]
        self.keeps = [mask.to(bits.dtype) for (_, mask), bits in zip(self.items, self.bits)]
        self.fixed = [bits * (1 - keep) for bits, keep in zip(self.bits, self.keeps)]

    @torch.no_grad()
    def restore(self):
        torch._foreach_mul_(self.bits, self.keeps)
        torch._foreach_add_(self.bits, self.fixed)


class ForeachBitsBool(ForeachBitsInt32):
    def __init__(self, model, masks):
        super().__init__(model, masks)
        self.keeps = [mask for _, mask in self.items]


class MaskedUpdateRestore(RestoreStrategy):
    def __init__(self, model, masks):
        super().__init__(model, masks)
        self.update = MaskedUpdate(model, masks)
        self.update.remove_gradient_hooks()

    def restore(self):
        self.update.restore()


RESTORE_STRATEGIES = {
    "where_bool": WhereBool,
    "index_copy_int64": IndexCopyInt64,
    "index_put_int32": IndexPutInt32,
    "masked_scatter": MaskedScatter,
    "bool_indexing": BoolIndexing,
    "flat_buffer_index_copy": FlatBufferIndexCopy,
    "foreach_bits_int32": ForeachBitsInt32,
    "foreach_bits_bool": ForeachBitsBool,
    "masked_update": MaskedUpdateRestore,
}


def _hook_clone_index_put(param, mask):
    index = (~mask).reshape(-1).nonzero().squeeze(1).to(torch.int32)
    zero = torch.zeros((), dtype=param.dtype)

    def hook(grad):
        masked = grad.clone()
        masked.view(-1).index_put_((index,), zero)
        return masked

    return param.register_hook(hook)


def _hook_where_scalar(param, mask):
    return param.register_hook(lambda grad: torch.where(mask, grad, 0.0))


def _hook_mul_bits(keep_dtype):
    def register(param, mask):
        bits = _BITS[param.element_size()]
        keep = mask.to(keep_dtype)
        return param.register_hook(lambda grad: torch.mul(grad.view(bits), keep).view(grad.dtype))

    return register


def _hook_post_accumulate_in_place(param, mask):
    bits = _BITS[param.element_size()]

    def hook(param):
        param.grad.view(bits).mul_(mask)

    return param.register_post_accumulate_grad_hook(hook)


HOOK_STRATEGIES = {
    "clone_index_put": _hook_clone_index_put,
    "where_scalar": _hook_where_scalar,
    "mul_bits_bool": _hook_mul_bits(torch.bool),
    "mul_bits_int32": _hook_mul_bits(torch.int32),
    "post_accumulate_in_place": _hook_post_accumulate_in_place,
}

DEFAULT_SCHEDULE = {"mlp_h2_w200": (30, 10), "roberta_h256_l4": (6, 1), "vit_b32": (20, 5)}


def compare_restores(case: ModelCase, args) -> dict:
    arms, strategies = {}, {}
    model = masked_copy(case, args.rho)[0]
    optimizer = make_adamw(model, "fused")
    arms["unmasked"] = lambda m=model, o=optimizer: train_step(case, m, o)
    for name in args.restores:
        model, masks = masked_copy(case, args.rho)
        strategies[name] = RESTORE_STRATEGIES[name](model, masks)
        optimizer = make_adamw(model, "fused")

        def step(m=model, o=optimizer, strategy=strategies[name]):
            train_step(case, m, o)
            strategy.restore()

        arms[name] = step
    return _run(case, args, arms, strategies)


def compare_hooks(case: ModelCase, args) -> dict:
    arms = {}
    for name in ["unmasked"] + args.hooks:
        model, masks = masked_copy(case, args.rho)
        if name != "unmasked":
            for param_name, param in model.named_parameters():
                HOOK_STRATEGIES[name](param, masks[param_name].to(param.device))
        optimizer = make_adamw(model, "fused")
        arms[name] = lambda m=model, o=optimizer: train_step(case, m, o)
    return _run(case, args, arms, {})


def _run(case: ModelCase, args, arms: dict, strategies: dict) -> dict:
    for call in arms.values():
        for _ in range(args.warmup):
            call()
    blocks, steps = DEFAULT_SCHEDULE[case.name]
    times = interleaved_times(arms, args.blocks or blocks, args.steps_per_block or steps, args.device)
    clock = "wall" if args.device.startswith("cuda") else "cpu"
    summary = summarize(times, "unmasked", clock)
    for name, strategy in strategies.items():
        summary[name]["exact"] = strategy.is_exact()
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda'.")
    parser.add_argument("--models", nargs="+", default=["mlp", "roberta"], choices=sorted(BUILDERS))
    parser.add_argument("--rho", type=float, default=0.4, help="Fraction of each targeted tensor that is fixed.")
    parser.add_argument("--restores", nargs="+", default=list(RESTORE_STRATEGIES), choices=list(RESTORE_STRATEGIES))
    parser.add_argument("--hooks", nargs="+", default=list(HOOK_STRATEGIES), choices=list(HOOK_STRATEGIES))
    parser.add_argument("--blocks", type=int, default=None, help="Timed blocks per arm (default: per model).")
    parser.add_argument("--steps-per-block", type=int, default=None, help="Training steps per block.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps per arm before timing.")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on the CPU.")
    parser.add_argument("--output", default=None, help="Write the results as JSON to this path.")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA GPU; none is visible to torch.")
    if not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads)

    results = {"command": " ".join(sys.argv), "torch": torch.__version__, "rho": args.rho, "models": {}}
    for key in args.models:
        case = BUILDERS[key](args.device)
        print(f"{case.name}: {case.num_params():,} parameters", flush=True)
        results["models"][case.name] = {"restore": compare_restores(case, args), "hook": compare_hooks(case, args)}
        for section, summary in results["models"][case.name].items():
            print(f"  {section:<8}{'strategy':<26}{'ms/step':>9}{'ratio':>8}{'block ratio':>13}{'exact':>7}")
            for name, row in summary.items():
                exact = ""
                if "exact" in row:
                    exact = "yes" if row["exact"] else "NO"
                print(
                    f"  {'':<8}{name:<26}{1e3 * row['median_s']:>9.3f}{row['ratio_of_medians']:>8.3f}"
                    f"{row['median_block_ratio']:>13.3f}{exact:>7}"
                )
    if args.output:
        write_json_atomic(args.output, results)
    return results


if __name__ == "__main__":
    main()
