"""Classification heads over the per-observation outputs of a sequence encoder.

Reusable by every transformer-style model: the encoder hands over its token outputs
`tokens (B, T, D)`, the mask `keep (B, T)` (True = a real observation, False = padding) and,
when it has one, its [CLS] output `cls (B, D)`. Padding never enters a pooled value.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sitscli.core.errors import ConfigError

POOLINGS = ("cls", "mean", "max")


def masked_mean(tokens: Tensor, keep: Tensor) -> Tensor:
    """Mean over real observations: tokens (B, T, D), keep (B, T) -> (B, D); 0 for an empty series."""
    weights = keep.unsqueeze(-1).to(tokens.dtype)                       # (B, T, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def masked_max(tokens: Tensor, keep: Tensor) -> Tensor:
    """Max over real observations: tokens (B, T, D), keep (B, T) -> (B, D); 0 for an empty series."""
    filled = tokens.masked_fill(~keep.unsqueeze(-1), float("-inf"))     # (B, T, D)
    pooled = filled.amax(1)                                             # (B, D)
    return torch.where(keep.any(1, keepdim=True), pooled, torch.zeros_like(pooled))


class PooledHead(nn.Module):
    """Pool a sequence into one vector, then one linear layer to class logits.

    pooling: "cls" (the encoder's [CLS] output), "mean" or "max" over real observations.
    """

    def __init__(self, dim: int, num_classes: int, pooling: str = "max"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.linear = nn.Linear(dim, num_classes)

    def pool(self, tokens: Tensor, keep: Tensor, cls: Tensor | None = None) -> Tensor:
        """tokens (B, T, D), keep (B, T), cls (B, D) or None -> (B, D)."""
        if self.pooling == "cls":
            if cls is None:
                raise ConfigError("pooling 'cls' needs an encoder with a [CLS] token: use --pooling mean or max")
            return cls
        return masked_mean(tokens, keep) if self.pooling == "mean" else masked_max(tokens, keep)

    def forward(self, tokens: Tensor, keep: Tensor, cls: Tensor | None = None) -> Tensor:
        """-> logits (B, K)."""
        return self.linear(self.pool(tokens, keep, cls))
