"""LSTM sentiment classifier (Hochreiter & Schmidhuber, 1997) for the text task of the TNA-PFN LMC study.

Token ids go through an embedding, a single-direction LSTM over the unpadded part of each sequence,
and a linear head on the last hidden state. The paper trains this kind of model on IMDb reviews; the
offline substitute here is the Rotten Tomatoes snippets (`tna_hf.data.rotten_tomatoes`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


class LSTMClassifier(nn.Module):
    """Embedding -> LSTM -> linear head on the final hidden state.

    Args:
        vocab_size: Number of token ids, padding included.
        num_classes: Number of logits.
        embedding_dim: Size of each token embedding.
        hidden_size: LSTM hidden state size.
        num_layers: Stacked LSTM layers.
        padding_idx: Token id used for padding; its embedding stays zero and it is excluded from the
            sequence lengths. Padding must be on the right.

    Example:

    ```python
    >>> model = LSTMClassifier(vocab_size=1000, num_classes=2)
    >>> model(torch.tensor([[5, 9, 2, 0, 0]])).shape
    torch.Size([1, 2])
    ```
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int = 2,
        embedding_dim: int = 64,
        hidden_size: int = 128,
        num_layers: int = 1,
        padding_idx: int = 0,
    ):
        super().__init__()
        if vocab_size < 2:
            raise ValueError(f"LSTMClassifier needs vocab_size >= 2 (padding plus one token), got {vocab_size}.")
        self.padding_idx = padding_idx
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        # token_ids: (batch, seq_len), right-padded with padding_idx.
        lengths = (token_ids != self.padding_idx).sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.embedding(token_ids), lengths, batch_first=True, enforce_sorted=False)
        _, (hidden, _) = self.lstm(packed)
        # hidden: (num_layers, batch, hidden_size); the last layer's state summarizes the sequence.
        return self.head(hidden[-1])
