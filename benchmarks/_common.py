"""Models, training steps and the interleaved timer shared by the benchmark scripts.

Timing rule: the arms of a comparison run in one process, in blocks of a few steps, and the order of
the arms alternates from block to block, so slow phases of a shared machine hit every arm alike. Each
block records wall time and the CPU time of this process. On a CPU that other jobs also use, CPU time
is the steadier of the two because it leaves out the time this process waited for a core. On a GPU
only wall time means anything.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tna_hf import TNAConfig, build_masks
from tna_hf.models.mlp import MLP


@dataclass
class ModelCase:
    """A model with one fixed batch and the loss of a training step on it."""

    name: str
    model: torch.nn.Module
    inputs: dict
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor]
    autocast_dtype: torch.dtype | None = None

    def num_params(self) -> int:
        return sum(param.numel() for param in self.model.parameters() if param.requires_grad)


def _classification_loss(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(inputs["pixel_values"]), inputs["labels"])


def _hf_loss(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    return model(**inputs).loss


def build_mlp(device: str, batch_size: int = 32, seed: int = 0) -> ModelCase:
    """Build MLP_h2_w200 (784-200-200-10) with a random Fashion-MNIST-shaped batch."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MLP((1, 28, 28), num_classes=10, hidden_layers=2, width=200).to(device)
    inputs = {
        "pixel_values": torch.randn(batch_size, 1, 28, 28, generator=generator).to(device),
        "labels": torch.randint(0, 10, (batch_size,), generator=generator).to(device),
    }
    return ModelCase("mlp_h2_w200", model, inputs, _classification_loss)


def build_roberta(device: str, batch_size: int = 32, seq_len: int = 128, vocab_size: int = 8192, seed: int = 0):
    """Build a small randomly initialized RobertaForSequenceClassification: hidden 256, 4 layers, 4 heads, FFN 1024."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=seq_len + 2,
        num_labels=2,
    )
    torch.manual_seed(seed)
    model = RobertaForSequenceClassification(config).to(device)
    generator = torch.Generator().manual_seed(seed)
    # Token ids from 3 upwards, so no position is padding (RoBERTa's padding id is 1).
    input_ids = torch.randint(3, vocab_size, (batch_size, seq_len), generator=generator)
    inputs = {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "labels": torch.randint(0, 2, (batch_size,), generator=generator).to(device),
    }
    return ModelCase("roberta_h256_l4", model, inputs, _hf_loss)


def build_vit_b32(device: str, batch_size: int = 256, seed: int = 0) -> ModelCase:
    """Build timm's ViT-B/32 at 224 px (88M parameters), randomly initialized, trained under bf16 autocast."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("vit_base_patch32_224", pretrained=False, num_classes=100).to(device)
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "pixel_values": torch.randn(batch_size, 3, 224, 224, generator=generator).to(device),
        "labels": torch.randint(0, 100, (batch_size,), generator=generator).to(device),
    }
    return ModelCase("vit_b32", model, inputs, _classification_loss, autocast_dtype=torch.bfloat16)


BUILDERS = {"mlp": build_mlp, "roberta": build_roberta, "vit": build_vit_b32}


def make_adamw(model: torch.nn.Module, implementation: str) -> torch.optim.AdamW:
    """Create AdamW (lr 1e-4, weight decay 0.01) in the `fused`, `foreach` or `forloop` implementation."""
    flags = {
        "fused": {"fused": True},
        "foreach": {"foreach": True},
        "forloop": {"foreach": False, "fused": False},
    }
    if implementation not in flags:
        raise ValueError(f"Unknown AdamW implementation {implementation!r}; choose one of {sorted(flags)}.")
    return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **flags[implementation])


def train_step(case: ModelCase, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    if case.autocast_dtype is not None:
        with torch.autocast(device_type=case.inputs["labels"].device.type, dtype=case.autocast_dtype):
            loss = case.loss_fn(model, case.inputs)
    else:
        loss = case.loss_fn(model, case.inputs)
    loss.backward()
    optimizer.step()


def masked_copy(case: ModelCase, rho: float, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """Return a deep copy of the case's model and its masks at `rho` (the copy starts from the same weights)."""
    model = copy.deepcopy(case.model)
    return model, build_masks(model, TNAConfig(rho=rho, seed=seed))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_times(
    arms: dict[str, Callable[[], None]], blocks: int, steps_per_block: int, device: str
) -> dict[str, dict[str, list[float]]]:
    """Run every arm `blocks` times for `steps_per_block` calls, alternating the arm order per block.

    Returns:
        arm name -> {"wall": [...], "cpu": [...]}, seconds per call of each block.
    """
    times = {name: {"wall": [], "cpu": []} for name in arms}
    names = list(arms)
    for block in range(blocks):
        order = names if block % 2 == 0 else names[::-1]
        for name in order:
            synchronize(device)
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(steps_per_block):
                arms[name]()
            synchronize(device)
            times[name]["wall"].append((time.perf_counter() - wall_start) / steps_per_block)
            times[name]["cpu"].append((time.process_time() - cpu_start) / steps_per_block)
    return times


def summarize(times: dict[str, dict[str, list[float]]], reference: str, clock: str) -> dict[str, dict[str, float]]:
    """Median seconds per call of each arm, the ratio of medians to `reference` and the median of block ratios."""
    summary = {}
    ref = times[reference][clock]
    for name, clocks in times.items():
        values = clocks[clock]
        block_ratios = [value / ref_value for value, ref_value in zip(values, ref)]
        summary[name] = {
            "median_s": statistics.median(values),
            "ratio_of_medians": statistics.median(values) / statistics.median(ref),
            "median_block_ratio": statistics.median(block_ratios),
        }
    return summary


def write_json_atomic(path: str, results: dict) -> None:
    """Write `results` as sorted JSON to `path` through a temporary file, so an old file is never half-written."""
    tmp_path = path + ".tmp"
    with open(tmp_path, "w") as handle:
        json.dump(results, handle, indent=2, sort_keys=True)
    os.replace(tmp_path, path)
