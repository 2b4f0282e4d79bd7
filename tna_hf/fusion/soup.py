"""Weighted averages and model soups (Wortsman et al., 2022, "Model soups: averaging weights of
multiple fine-tuned models improves accuracy without increasing inference time").

A uniform soup averages every ingredient. A greedy soup sorts the ingredients by held-out score,
starts from the best one and adds each next ingredient only if the soup's held-out score improves.
TNA-PFN (Li et al.) fine-tunes every ingredient from one initial checkpoint with one mask, which
keeps the ingredients linearly connected so that their soups lose less accuracy.

Sources may be state dicts or checkpoint paths (see `tna_hf.fusion.sources`). Paths are streamed:
the running float64 sum and one ingredient's tensors are in memory at a time, so peak memory stays
near one float64 copy of the model plus one ingredient, whatever the number of ingredients.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Optional, Union

import torch

from ._accumulate import RunningSum, parse_buffer_policy
from .sources import StateDictSource, check_provenance, describe_source, iter_state_dict, load_state_dict

logger = logging.getLogger(__name__)


def _validate_weights(weights: Sequence[float], num_sources: int) -> list[float]:
    values = [float(weight) for weight in weights]
    if len(values) != num_sources:
        raise ValueError(f"Got {len(values)} weights for {num_sources} state dicts; pass one weight per state dict.")
    invalid = [(index, weight) for index, weight in enumerate(values) if not math.isfinite(weight) or weight < 0]
    if invalid:
        raise ValueError(f"Weights must be finite and non-negative; invalid (index, weight) pairs: {invalid}.")
    if not any(values):
        raise ValueError("Every weight is 0; give at least one state dict a positive weight.")
    return values


def _average_sources(
    sources: Sequence[StateDictSource],
    weights: Sequence[float],
    labels: Sequence[str],
    mismatched_integer_buffers: str,
    strict: bool,
    operation: str,
) -> dict[str, torch.Tensor]:
    # stacklevel 3 points warnings at the line that called average_state_dicts or uniform_soup.
    check_provenance(sources, labels, strict=strict, stacklevel=3)
    running = RunningSum(mismatched_integer_buffers, operation=operation)
    for source, weight, label in zip(sources, weights, labels):
        running.add(iter_state_dict(source), weight, label)
    return running.result(consume=True)


def average_state_dicts(
    state_dicts: Sequence[StateDictSource],
    weights: Optional[Sequence[float]] = None,
    mismatched_integer_buffers: str = "error",
    strict: bool = False,
) -> dict[str, torch.Tensor]:
    """Compute the weighted average `sum_i w_i * sd_i / sum_i w_i` of state dicts, name by name.

    Floating tensors are accumulated in float64 (complex ones in complex128) and cast back to the
    dtype of the first state dict. Averaging copies of one tensor returns it bit for bit, and so do
    entries that are equal in every input. Integer and boolean buffers are not averaged: they must be
    equal in every input.

    Args:
        state_dicts: State dicts or checkpoint paths, all with the same keys and shapes.
        weights: One finite non-negative weight per state dict, not all zero, e.g. client sample
            counts in FedAvg. They are normalized to sum to 1; None gives equal weights.
        mismatched_integer_buffers: `"error"` raises when an integer or boolean buffer differs, for
            example BatchNorm `num_batches_tracked` after different step counts. `"first"` keeps the
            value of the first state dict.
        strict: Raise instead of warning when checkpoint directories record different initial
            checkpoints or masks in `tna_provenance.json`.

    Returns:
        A new state dict with the keys of the first input, in its order.

    Raises:
        ValueError: No inputs, invalid weights, keys or shapes differ, or an integer buffer differs
            under `"error"`; the message names the keys.

    Example:

    ```python
    >>> global_weights = average_state_dicts([client_a, client_b], weights=[600, 400])
    ```
    """
    sources = list(state_dicts)
    if not sources:
        raise ValueError("average_state_dicts needs at least one state dict.")
    parse_buffer_policy(mismatched_integer_buffers)
    values = _validate_weights(weights, len(sources)) if weights is not None else [1.0] * len(sources)
    labels = [describe_source(source, index) for index, source in enumerate(sources)]
    return _average_sources(sources, values, labels, mismatched_integer_buffers, strict, operation="weighted average")


def uniform_soup(
    sources: Sequence[StateDictSource],
    mismatched_integer_buffers: str = "error",
    strict: bool = False,
) -> dict[str, torch.Tensor]:
    """Average every ingredient with equal weight (the uniform soup of Wortsman et al., 2022).

    Checkpoint paths are read one at a time and safetensors files one tensor at a time, so peak
    memory is about one float64 copy of the model plus one ingredient's tensors, whatever the number
    of ingredients. The soup of one model, or of copies of one model, is that model bit for bit.

    Args:
        sources: State dicts or checkpoint paths of the ingredients (see `tna_hf.fusion.sources`).
        mismatched_integer_buffers: `"error"` or `"first"`, as in `average_state_dicts`.
        strict: Raise `ProvenanceMismatchError` instead of warning when checkpoint directories record
            different initial checkpoints or masks in `tna_provenance.json`.

    Returns:
        The soup's state dict, with the dtypes and key order of the first ingredient.

    Raises:
        ValueError: No ingredients, keys or shapes differ, or an integer buffer differs under `"error"`.
        ProvenanceMismatchError: `strict` is True and the ingredients' provenance disagrees.

    Example:

    ```python
    >>> soup = uniform_soup(["runs/lr1e-5", "runs/lr3e-5", "runs/lr1e-4"])
    >>> model.load_state_dict(soup)
    ```
    """
    sources = list(sources)
    if not sources:
        raise ValueError("uniform_soup needs at least one ingredient.")
    parse_buffer_policy(mismatched_integer_buffers)
    labels = [describe_source(source, index) for index, source in enumerate(sources)]
    logger.info("Uniform soup of %d ingredients.", len(sources))
    return _average_sources(sources, [1.0] * len(sources), labels, mismatched_integer_buffers, strict, "soup")


@dataclass
class GreedySoupEntry:
    """One ingredient of a greedy soup, in the order it was tried.

    Attributes:
        name: The ingredient's name.
        individual_score: Held-out score of the ingredient alone.
        soup_score: Held-out score of the soup with this ingredient added. The soup of the first (best)
            ingredient is the ingredient itself, so its soup score is its individual score.
        accepted: Whether the ingredient stayed in the soup.
    """

    name: str
    individual_score: float
    soup_score: float
    accepted: bool


@dataclass
class GreedySoupReport:
    """Every ingredient of a greedy soup with its scores and verdict.

    Attributes:
        entries: One entry per ingredient, in the order tried (descending individual score).
        tie_rule: `"strict"` (an ingredient is kept only if the soup's score rises) or `"accept_ties"`
            (kept if the score does not fall).
        final_score: Held-out score of the returned soup.
    """

    entries: list[GreedySoupEntry] = field(default_factory=list)
    tie_rule: str = "strict"
    final_score: float = float("nan")

    @property
    def accepted_names(self) -> list[str]:
        """Names of the ingredients in the soup, in the order they were added."""
        return [entry.name for entry in self.entries if entry.accepted]

    def to_dict(self) -> dict:
        """Return the report as JSON-serializable built-in types."""
        return asdict(self)

    def format_table(self) -> str:
        """Return the report as a plain-text table, one row per ingredient in the order tried."""
        width = max([len("ingredient")] + [len(entry.name) for entry in self.entries])
        lines = [f"{'ingredient':<{width}}  individual  soup score  accepted"]
        for entry in self.entries:
            verdict = "yes" if entry.accepted else "no"
            lines.append(f"{entry.name:<{width}}  {entry.individual_score:10.4f}  {entry.soup_score:10.4f}  {verdict}")
        lines.append(
            f"final score {self.final_score:.4f} with {len(self.accepted_names)} ingredients ({self.tie_rule})"
        )
        return "\n".join(lines)


def _checked_score(value: object, subject: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
        raise ValueError(f"The held-out score of {subject} is {value!r}; evaluate must return a real number, not NaN.")
    return float(value)


def _ingredient_list(
    ingredients: Union[Sequence[tuple[str, StateDictSource]], Mapping[str, StateDictSource]],
) -> list[tuple[str, StateDictSource]]:
    items = list(ingredients.items()) if isinstance(ingredients, Mapping) else list(ingredients)
    if not items:
        raise ValueError("greedy_soup needs at least one ingredient.")
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise TypeError(f"Each ingredient must be a (name, state dict or path) tuple, got {item!r:.100}.")
    names = [name for name, _ in items]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Ingredient names must be unique; repeated: {duplicates}.")
    return items


def greedy_soup(
    ingredients: Union[Sequence[tuple[str, StateDictSource]], Mapping[str, StateDictSource]],
    evaluate: Callable[[dict[str, torch.Tensor]], float],
    scores: Optional[Mapping[str, float]] = None,
    accept_ties: bool = False,
    mismatched_integer_buffers: str = "error",
    strict: bool = False,
) -> tuple[dict[str, torch.Tensor], GreedySoupReport]:
    """Build a greedy soup (Wortsman et al., 2022).

    The ingredients are sorted by held-out score, highest first (ties keep the input order). The
    soup starts as the best ingredient. Each next ingredient is added to the uniform average of the
    accepted ones and the result is evaluated. The ingredient is kept only if the score beats the
    best score so far (`>`, as in the authors' code) or, with `accept_ties`, matches it (`>=`).

    Paths are streamed: memory contains the float64 sum of the accepted ingredients, the candidate soup
    and the model inside `evaluate`. An accepted path ingredient is read a second time to add it to
    the sum, which keeps the returned soup bit-identical to the candidate soup that was scored.

    Args:
        ingredients: `(name, source)` pairs or a mapping from name to source; a source is a state
            dict or a checkpoint path.
        evaluate: Returns the held-out score of a state dict (higher is better), e.g. validation
            accuracy. Use data held out from training and from the final test.
        scores: Precomputed individual held-out scores by name; missing ones are computed with `evaluate`.
        accept_ties: Keep an ingredient whose soup scores exactly as well as the best so far.
        mismatched_integer_buffers: `"error"` or `"first"`, as in `average_state_dicts`.
        strict: Raise instead of warning when checkpoint directories record different initial
            checkpoints or masks.

    Returns:
        `(soup_state_dict, report)`, where the report lists every ingredient with its individual
        score, the soup score when tried and whether it was accepted, plus the tie rule used.

    Raises:
        ValueError: No ingredients, repeated names, scores for unknown names, a NaN or non-numeric
            score, or state dicts that do not match (see `average_state_dicts`).

    Example:

    ```python
    >>> soup, report = greedy_soup([("lr1e-5", "runs/a"), ("lr3e-5", "runs/b")], evaluate=val_accuracy)
    >>> print(report.format_table())
    ```
    """
    items = _ingredient_list(ingredients)
    parse_buffer_policy(mismatched_integer_buffers)
    names = [name for name, _ in items]
    scores = dict(scores or {})
    unknown = sorted(set(scores) - set(names))
    if unknown:
        raise ValueError(f"scores has names that are not ingredients: {unknown}; ingredients are {names}.")
    check_provenance([source for _, source in items], names, strict=strict, stacklevel=2)

    # Individual held-out scores, loading one ingredient at a time.
    individual: dict[str, float] = {}
    for name, source in items:
        if name in scores:
            individual[name] = _checked_score(scores[name], f"ingredient {name!r}")
        else:
            individual[name] = _checked_score(evaluate(load_state_dict(source)), f"ingredient {name!r}")
            logger.info("Greedy soup: ingredient %r scores %.6g alone.", name, individual[name])

    # sorted() is stable, so ingredients with equal scores keep the input order.
    ordered = sorted(items, key=lambda item: -individual[item[0]])
    tie_rule = "accept_ties" if accept_ties else "strict"
    report = GreedySoupReport(tie_rule=tie_rule)

    running = RunningSum(mismatched_integer_buffers, operation="greedy soup")
    best_name, best_source = ordered[0]
    running.add(iter_state_dict(best_source), 1.0, best_name)
    best_score = individual[best_name]
    report.entries.append(GreedySoupEntry(best_name, best_score, best_score, accepted=True))

    for name, source in ordered[1:]:
        candidate = running.preview_add(iter_state_dict(source), 1.0, name)
        soup_score = _checked_score(evaluate(candidate), f"the soup with {name!r}")
        del candidate
        accepted = soup_score >= best_score if accept_ties else soup_score > best_score
        logger.info(
            "Greedy soup: adding %r scores %.6g against the best %.6g: %s.",
            name,
            soup_score,
            best_score,
            "accepted" if accepted else "rejected",
        )
        if accepted:
            running.add(iter_state_dict(source), 1.0, name)
            best_score = soup_score
        report.entries.append(GreedySoupEntry(name, individual[name], soup_score, accepted))

    report.final_score = best_score
    return running.result(consume=True), report
