"""Evaluation of a ColD fusion base (Don-Yehiya et al., 2023): each task's fused body with that task's head.

The fused body was never trained together with any contributor's head, so besides the head as the
contributor left it (the "kept head"), this module refits a copy of the head briefly on the fused body,
with the body frozen, on the contributor's own training examples (the "refit head"). The refit trains
only the head on cached body outputs, so it costs one forward pass over the refit examples.

Speed on CPUs: evaluation batches are sorted by length and padded only to their longest example, and the
body runs under bfloat16 autocast when asked.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from ..data.text_tasks import TextSplit
from ..models.text import get_head_module

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
CachedBatch = tuple[torch.Tensor, torch.Tensor]  # (head input, labels)


def tokenize_split(
    tokenizer: PreTrainedTokenizerBase, split: TextSplit, max_length: int, with_token_type_ids: bool = True
) -> list[dict[str, list[int]]]:
    """Tokenize a split (truncated to `max_length` tokens, unpadded) into examples with `labels`.

    Args:
        tokenizer: A fast or slow `transformers` tokenizer.
        split: Texts, optional text pairs and labels.
        max_length: Longest tokenized input, special tokens included.
        with_token_type_ids: Keep `token_type_ids`; models with one token type (RoBERTa) need False for pairs.

    Returns:
        One dict per example with `input_ids`, `attention_mask`, `labels` (and `token_type_ids`).
    """
    encoded = tokenizer(
        split.texts,
        split.text_pairs,
        truncation=True,
        max_length=max_length,
        return_token_type_ids=with_token_type_ids,
    )
    keys = [key for key in ("input_ids", "attention_mask", "token_type_ids") if key in encoded]
    return [
        {**{key: encoded[key][i] for key in keys}, "labels": int(label)} for i, label in enumerate(split.labels)
    ]


def make_length_sorted_batches(
    examples: Sequence[dict], tokenizer: PreTrainedTokenizerBase, batch_size: int
) -> list[Batch]:
    """Group examples of similar length into padded batches (each padded only to its own longest example)."""
    collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    return [
        collator([examples[i] for i in order[start : start + batch_size]])
        for start in range(0, len(order), batch_size)
    ]


@torch.no_grad()
def collect_head_inputs(model: torch.nn.Module, batches: Sequence[Batch], bf16: bool = False) -> list[CachedBatch]:
    """Run the model over `batches` in eval mode and return what its head receives, per batch, in float32.

    A forward pre-hook on the head module captures its input: the pooled output for BERT, the sequence
    output for RoBERTa (whose head reads the first token itself).
    """
    head = get_head_module(model)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().float()))
    was_training = model.training
    model.eval()
    cached = []
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    try:
        for batch in batches:
            inputs = {key: value.to(device) for key, value in batch.items() if key != "labels"}
            with autocast:
                model(**inputs)
            cached.append((captured.pop(), batch["labels"]))
    finally:
        handle.remove()
        model.train(was_training)
    return cached


@torch.no_grad()
def count_correct(head: torch.nn.Module, cached: Sequence[CachedBatch]) -> tuple[int, int]:
    """Return (correct, total) of `head` on cached head inputs (eval mode)."""
    was_training = head.training
    head.eval()
    correct = total = 0
    for features, labels in cached:
        predictions = head(features).argmax(dim=-1).cpu()
        correct += int((predictions == labels).sum())
        total += len(labels)
    head.train(was_training)
    return correct, total


def refit_head(
    head: torch.nn.Module, cached: Sequence[CachedBatch], steps: int, learning_rate: float, seed: int = 0
) -> torch.nn.Module:
    """Return a copy of `head` trained for `steps` AdamW steps on cached head inputs (batches taken in turn).

    Raises:
        ValueError: `steps` is negative or `cached` is empty while `steps` > 0.
    """
    if steps < 0:
        raise ValueError(f"head refit steps must be >= 0, got {steps}.")
    refitted = copy.deepcopy(head).float()
    if steps == 0:
        return refitted
    if not cached:
        raise ValueError("Cannot refit a head without training examples; pass at least one cached batch.")
    refitted.train()
    optimizer = torch.optim.AdamW(refitted.parameters(), lr=learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(cached), generator=generator).tolist()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout inside the head (RoBERTa)
        for step in range(steps):
            features, labels = cached[order[step % len(order)]]
            loss = torch.nn.functional.cross_entropy(refitted(features), labels.to(features.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    refitted.eval()
    return refitted


@dataclass
class TaskEvaluation:
    """Accuracy of one task's fused body with the kept head and with the refit head (None when not refit)."""

    task: str
    correct_kept: int
    correct_refit: Optional[int]
    total: int

    @property
    def accuracy_kept(self) -> float:
        return self.correct_kept / self.total

    @property
    def accuracy_refit(self) -> Optional[float]:
        return None if self.correct_refit is None else self.correct_refit / self.total


def evaluate_task(
    task: str,
    model: torch.nn.Module,
    test_batches: Sequence[Batch],
    refit_batches: Sequence[Batch],
    head_refit_steps: int,
    head_refit_learning_rate: float,
    bf16: bool = False,
    seed: int = 0,
) -> TaskEvaluation:
    """Evaluate `model` (fused body + the task's kept head) on `test_batches`, and after a brief head refit.

    Args:
        task: Task name for the result.
        model: The contributor's model with the fused body loaded.
        test_batches: Padded test batches (`make_length_sorted_batches`).
        refit_batches: Padded batches of the contributor's training examples for the refit.
        head_refit_steps: AdamW steps of the head refit; 0 skips the refit.
        head_refit_learning_rate: Learning rate of the refit.
        bf16: Run the body under bfloat16 autocast.
        seed: Seed of the refit's batch order.
    """
    head = get_head_module(model)
    test_cached = collect_head_inputs(model, test_batches, bf16=bf16)
    correct_kept, total = count_correct(head, test_cached)
    correct_refit = None
    if head_refit_steps > 0:
        refit_cached = collect_head_inputs(model, refit_batches, bf16=bf16)
        refitted = refit_head(head, refit_cached, head_refit_steps, head_refit_learning_rate, seed=seed)
        correct_refit, _ = count_correct(refitted, test_cached)
    return TaskEvaluation(task=task, correct_kept=correct_kept, correct_refit=correct_refit, total=total)
