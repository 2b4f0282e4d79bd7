"""Cost of TNA-PFN's masked update (`MaskedUpdate`): step time, saved mask size and memory.

Measures, for MLP_h2_w200 (batch 32) and a small RoBERTa (hidden 256, 4 layers, 4 heads, FFN 1024,
batch 32, sequence 128) on the CPU, or a ViT-B/32-sized model under bf16 autocast with `--device cuda`:

1. the masked / unmasked training-step time ratio with AdamW (fused and for-loop implementations),
   measured interleaved in one process: the arms alternate block by block, and the script reports the
   median over blocks of both wall time and process CPU time;
2. the bits per targeted entry of a saved mask (`save_masks` file size * 8 / targeted entries);
3. the bytes per targeted parameter that `MaskedUpdate` keeps (its select buffers), and the extra
   peak memory of one training step over an unmasked step.

Usage:

    .venv/bin/python benchmarks/masked_step.py                      # CPU, both models
    .venv/bin/python benchmarks/masked_step.py --models mlp --blocks 40
    .venv/bin/python benchmarks/masked_step.py --device cuda        # ViT-B/32, bf16 autocast

Results are printed as a table and written as JSON with `--output`.
"""

# ruff: noqa: T201
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

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
    synchronize,
    train_step,
    write_json_atomic,
)

from tna_hf import MaskedUpdate, save_masks  # noqa: E402

TARGETS = {"mlp_h2_w200": 1.15, "roberta_h256_l4": 1.01, "vit_b32": 1.005}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda' (ViT-B/32 in bf16 autocast).")
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=sorted(BUILDERS),
        help="Models to measure (default: mlp roberta on the CPU, vit on CUDA).",
    )
    parser.add_argument("--rho", type=float, default=0.4, help="Fraction of each targeted tensor that is fixed.")
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=None,
        choices=["fused", "foreach", "forloop"],
        help="AdamW implementations (default: fused forloop on the CPU, fused on CUDA).",
    )
    parser.add_argument("--blocks", type=int, default=None, help="Timed blocks per arm (default: per model).")
    parser.add_argument("--steps-per-block", type=int, default=None, help="Training steps per block.")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps per arm before timing.")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on the CPU.")
    parser.add_argument("--output", default=None, help="Write the results as JSON to this path.")
    return parser.parse_args(argv)


# Blocks and steps per block sized so each model takes a few minutes on 2 shared CPU cores.
DEFAULT_SCHEDULE = {"mlp_h2_w200": (60, 20), "roberta_h256_l4": (16, 1), "vit_b32": (30, 5)}


def measure_step_ratio(case: ModelCase, args, optimizers: list[str]) -> dict:
    """Time masked and unmasked AdamW steps interleaved; check that the masked model kept its fixed entries."""
    arms, updates = {}, {}
    for implementation in optimizers:
        unmasked_model = masked_copy(case, args.rho)[0]
        unmasked_opt = make_adamw(unmasked_model, implementation)
        masked_model, masks = masked_copy(case, args.rho)
        masked_opt = make_adamw(masked_model, implementation)
        updates[implementation] = MaskedUpdate(masked_model, masks).attach(masked_opt)
        arms[f"unmasked_{implementation}"] = (unmasked_model, unmasked_opt)
        arms[f"masked_{implementation}"] = (masked_model, masked_opt)

    calls = {name: (lambda m=model, o=opt: train_step(case, m, o)) for name, (model, opt) in arms.items()}
    for call in calls.values():
        for _ in range(args.warmup):
            call()
    blocks, steps = DEFAULT_SCHEDULE[case.name]
    times = interleaved_times(calls, args.blocks or blocks, args.steps_per_block or steps, args.device)

    result = {"blocks": args.blocks or blocks, "steps_per_block": args.steps_per_block or steps}
    for implementation in optimizers:
        pair = {name: times[name] for name in (f"unmasked_{implementation}", f"masked_{implementation}")}
        changed = updates[implementation].verify()
        if changed:
            raise RuntimeError(f"Fixed entries moved during the benchmark in {changed}.")
        for clock in ("cpu", "wall"):
            summary = summarize(pair, f"unmasked_{implementation}", clock)
            result[f"{implementation}_{clock}"] = {
                "unmasked_ms": 1e3 * summary[f"unmasked_{implementation}"]["median_s"],
                "masked_ms": 1e3 * summary[f"masked_{implementation}"]["median_s"],
                "ratio_of_medians": summary[f"masked_{implementation}"]["ratio_of_medians"],
                "median_block_ratio": summary[f"masked_{implementation}"]["median_block_ratio"],
            }
    components = measure_components(updates[optimizers[0]], args.device)
    unmasked_ms = result[f"{optimizers[0]}_cpu"]["unmasked_ms"]
    if args.device.startswith("cuda"):
        unmasked_ms = result[f"{optimizers[0]}_wall"]["unmasked_ms"]
    components["estimated_ratio"] = 1 + (components["restore_ms"] + components["hooks_ms"]) / unmasked_ms
    result["components"] = components
    if "fused" in optimizers and "forloop" in optimizers:
        fused_vs_forloop = summarize(times, "unmasked_forloop", "cpu")["unmasked_fused"]["ratio_of_medians"]
        result["unmasked_fused_over_forloop_cpu"] = fused_vs_forloop
    return result


def measure_components(update: MaskedUpdate, device: str, repeats: int = 10) -> dict:
    """Time the restore and all gradient hooks of one step directly, with caches flushed before each call.

    This is a steadier estimate of the overhead than the step-time ratio when other jobs share the CPU,
    because it times only the added work. It leaves out the cost of the hooks' new tensors inside backward.
    """
    flush = torch.empty(64 * 2**20 // 4, device=device)
    gradients = {name: torch.randn_like(entries.param) for name, entries in update._entries.items()}
    hooks = {name: update._make_gradient_hook(entries) for name, entries in update._entries.items()}

    def timed(fn) -> float:
        times = []
        for _ in range(repeats):
            flush.add_(1.0)
            synchronize(device)
            start = time.perf_counter() if device.startswith("cuda") else time.process_time()
            fn()
            synchronize(device)
            end = time.perf_counter() if device.startswith("cuda") else time.process_time()
            times.append(end - start)
        return 1e3 * statistics.median(times)

    def run_hooks() -> None:
        for name, hook in hooks.items():
            hook(gradients[name])

    return {"restore_ms": timed(update.restore), "hooks_ms": timed(run_hooks)}


def measure_mask_file(case: ModelCase, rho: float) -> dict:
    """Bits per targeted entry of `tna_mask.safetensors`, with and without its header."""
    _, masks = masked_copy(case, rho)
    targeted = sum(mask.numel() for mask in masks.values())
    with tempfile.TemporaryDirectory() as directory:
        path = save_masks(masks, directory)
        size = os.path.getsize(path)
    payload_bytes = (targeted + 7) // 8
    return {
        "targeted_entries": targeted,
        "file_bytes": size,
        "bits_per_entry": size * 8 / targeted,
        "payload_bits_per_entry": payload_bytes * 8 / targeted,
        "header_bytes": size - payload_bytes,
    }


def _cpu_peak_bytes(fn) -> int:
    """Return an upper bound of the peak of (allocated - freed) CPU bytes while `fn` runs, from the profiler.

    The profiler reports each operator's own allocations net of its own frees, and frees outside any
    operator as "[memory]" events. Counting a net allocation at the operator's start and a net free at its
    end gives an upper bound of the true peak at operator granularity.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = []
    for event in prof.events():
        usage = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if usage > 0:
            changes.append((event.time_range.start, usage))
        elif usage < 0:
            changes.append((event.time_range.end, usage))
    current = peak = 0
    for _, usage in sorted(changes):
        current += usage
        peak = max(peak, current)
    return peak


def _step_peak_bytes(case: ModelCase, model, optimizer, device: str) -> int:
    step = lambda: train_step(case, model, optimizer)  # noqa: E731
    if device.startswith("cuda"):
        synchronize(device)
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated() - start
    return _cpu_peak_bytes(step)


def measure_memory(case: ModelCase, rho: float, device: str, implementation: str) -> dict:
    """Bytes per targeted parameter held by `MaskedUpdate`, and the extra peak of one training step."""
    unmasked_model = masked_copy(case, rho)[0]
    unmasked_opt = make_adamw(unmasked_model, implementation)
    masked_model, masks = masked_copy(case, rho)
    masked_opt = make_adamw(masked_model, implementation)
    update = MaskedUpdate(masked_model, masks).attach(masked_opt)
    targeted = sum(mask.numel() for mask in masks.values())

    # Two steps first, so the optimizer state exists and the measured step is a steady-state one.
    for _ in range(2):
        train_step(case, unmasked_model, unmasked_opt)
        train_step(case, masked_model, masked_opt)
    unmasked_peak = _step_peak_bytes(case, unmasked_model, unmasked_opt, device)
    masked_peak = _step_peak_bytes(case, masked_model, masked_opt, device)
    held = update._buffer_nbytes()
    largest = max(param.numel() * param.element_size() for param in masked_model.parameters())
    return {
        "held_bytes": held,
        "held_bytes_per_param": held / targeted,
        "unmasked_step_peak_bytes": unmasked_peak,
        "masked_step_peak_bytes": masked_peak,
        "step_peak_extra_bytes": masked_peak - unmasked_peak,
        "step_peak_extra_bytes_per_param": (masked_peak - unmasked_peak) / targeted,
        "largest_param_bytes": largest,
        "peak_method": "cuda max_memory_allocated" if device.startswith("cuda") else "profiler, per-operator bound",
    }


def machine_description(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    model_name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model_name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model_name}, {os.cpu_count()} logical CPUs"


def print_table(results: dict) -> None:
    print(
        f"\nmachine: {results['machine']}; torch {results['torch']}; rho {results['rho']}; threads {results['threads']}"
    )
    header = f"{'model':<18}{'AdamW':<9}{'clock':<6}{'unmasked ms':>12}{'masked ms':>11}{'ratio':>8}"
    header += f"{'block ratio':>13}{'target':>8}"
    print(header)
    for name, model_results in results["models"].items():
        for key, value in model_results["step"].items():
            if key == "components" or not isinstance(value, dict):
                continue
            implementation, clock = key.rsplit("_", 1)
            print(
                f"{name:<18}{implementation:<9}{clock:<6}{value['unmasked_ms']:>12.3f}{value['masked_ms']:>11.3f}"
                f"{value['ratio_of_medians']:>8.3f}{value['median_block_ratio']:>13.3f}{TARGETS[name]:>8.3f}"
            )
    print(
        f"\n{'model':<18}{'targeted':>12}{'file bytes':>12}{'bits/entry':>12}{'held B/param':>14}"
        f"{'step peak extra B/param':>25}"
    )
    for name, model_results in results["models"].items():
        mask_file, memory = model_results["mask_file"], model_results["memory"]
        print(
            f"{name:<18}{mask_file['targeted_entries']:>12}{mask_file['file_bytes']:>12}"
            f"{mask_file['bits_per_entry']:>12.4f}{memory['held_bytes_per_param']:>14.3f}"
            f"{memory['step_peak_extra_bytes_per_param']:>25.3f}"
        )
    for name, model_results in results["models"].items():
        components = model_results["step"]["components"]
        print(
            f"{name}: restore {components['restore_ms']:.3f} ms + hooks {components['hooks_ms']:.3f} ms per step, "
            f"timed alone; estimated ratio {components['estimated_ratio']:.4f}"
        )
        if "unmasked_fused_over_forloop_cpu" in model_results["step"]:
            print(
                f"{name}: unmasked fused AdamW step / for-loop AdamW step (CPU time) = "
                f"{model_results['step']['unmasked_fused_over_forloop_cpu']:.3f}"
            )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA GPU; none is visible to torch.")
    if not args.device.startswith("cuda"):
        torch.set_num_threads(args.threads)
    models = args.models or (["vit"] if args.device.startswith("cuda") else ["mlp", "roberta"])
    optimizers = args.optimizers or (["fused"] if args.device.startswith("cuda") else ["fused", "forloop"])

    results = {
        "machine": machine_description(args.device),
        "torch": torch.__version__,
        "device": args.device,
        "rho": args.rho,
        "threads": args.threads,
        "command": " ".join(sys.argv),
        "models": {},
    }
    for key in models:
        case = BUILDERS[key](args.device)
        print(f"{case.name}: {case.num_params():,} parameters", flush=True)
        results["models"][case.name] = {
            "num_params": case.num_params(),
            "mask_file": measure_mask_file(case, args.rho),
            "memory": measure_memory(case, args.rho, args.device, optimizers[0]),
            "step": measure_step_ratio(case, args, optimizers),
        }
    print_table(results)
    if args.output:
        write_json_atomic(args.output, results)
    return results


if __name__ == "__main__":
    main()
