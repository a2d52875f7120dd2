"""A stand-in for the SITS-BERT reference code's training (github.com/linlei1214/SITS-BERT), for speed.

Written here from the reference's structure, not copied, so that `train_speed.py` can time both on
the same machine: what matters is that it does the same work the same way.
- Data: every series padded to 64 observations (`PretrainDataset`), the contamination drawn per
  observation in Python in `__getitem__` (the pretext: pick with p 0.15, add U[0, 0.5] or subtract).
- Embedding: Linear(bands, D/2) repeated to D, its second half overwritten sample by sample (a Python
  loop over the batch) with a sinusoid table looked up by day of year; dropout.
- Blocks (BERT-pytorch): x + Dropout(f(LayerNorm(x))) for attention and feed-forward, then one more
  Dropout; LayerNorm written out (unbiased std, eps outside the root), GELU written out (tanh form),
  attention as matmul -> masked_fill(-1e9) -> softmax -> Dropout -> matmul, on a (B, 1, L, L) mask.
- Heads: Linear(D, bands) for the pretext (MSE on the picked observations), MaxPool over all 64
  positions then Linear for the classifier (cross-entropy).
- Step: Adam; pre-training clips gradients at norm 5.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

SEQ_LEN = 64


class PaddedSeries(Dataset):
    """Series of `source` (values (n, L, C), dates (n, L) int days, lengths (n,), y (n,)) padded to
    SEQ_LEN, contaminated per item when `pretext` (as the reference's PretrainDataset)."""

    def __init__(self, values: np.ndarray, doy: np.ndarray, lengths: np.ndarray, y: np.ndarray, pretext: bool):
        self.values, self.doy, self.lengths, self.y, self.pretext = values, doy, lengths, y, pretext

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        t, bands = int(self.lengths[i]), self.values.shape[2]
        target = np.zeros((SEQ_LEN, bands))
        target[:t] = self.values[i, :t]
        keep = np.zeros(SEQ_LEN, dtype=int)
        keep[:t] = 1
        doy = np.zeros(SEQ_LEN, dtype=int)
        doy[:t] = self.doy[i, :t]
        item = {"target": target, "keep": keep, "doy": doy, "y": np.int64(self.y[i])}
        if self.pretext:
            item["input"], item["picked"] = self._contaminate(target, t)
        else:
            item["input"] = target
        return {k: torch.from_numpy(np.asarray(v)) for k, v in item.items()}

    @staticmethod
    def _contaminate(series: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        noisy, picked = series.copy(), np.zeros(SEQ_LEN, dtype=int)
        for i in range(length):
            draw = random.random()
            if draw < 0.15:
                picked[i] = 1
                low, high = (-0.5, 0.0) if draw / 0.15 < 0.5 else (0.0, 0.5)
                noisy[i] += np.random.uniform(low, high, size=series.shape[1])
        return noisy, picked


def _gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.pow(3))))


class _LayerNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.scale, self.shift, self.eps = nn.Parameter(torch.ones(size)), nn.Parameter(torch.zeros(size)), eps

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + self.eps) + self.shift


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(hidden, hidden) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, L, D), mask (B, 1, L, L) bool -> (B, L, D)."""
        b, length, d = x.shape
        q, k, v = (p(x).view(b, length, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))  # (B, H, L, D/H)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)).masked_fill(~mask, -1e9)   # (B, H, L, L)
        y = self.dropout(scores.softmax(-1)) @ v
        return self.out(y.transpose(1, 2).reshape(b, length, d))


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.attn = _Attention(hidden, heads, dropout)
        self.fc1, self.fc2 = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)
        self.norm1, self.norm2 = _LayerNorm(hidden), _LayerNorm(hidden)
        self.drop_attn, self.drop_ff, self.drop_inner, self.drop_out = (nn.Dropout(dropout) for _ in range(4))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.drop_attn(self.attn(self.norm1(x), mask))
        x = x + self.drop_ff(self.fc2(self.drop_inner(_gelu(self.fc1(self.norm2(x))))))
        return self.drop_out(x)


class ReferenceSitsBert(nn.Module):
    """batch of `PaddedSeries` -> (B, 64, bands) reconstruction, or (B, K) logits with `num_classes`."""

    def __init__(self, bands: int, hidden: int, layers: int, heads: int, num_classes: int = 0, dropout: float = 0.1):
        super().__init__()
        half = hidden // 2
        self.half = half
        self.bands = nn.Linear(bands, half)
        position = torch.arange(367).float()[:, None]                                   # (367, 1) day of year
        angle = position * torch.exp(torch.arange(0, half, 2).float() * (-math.log(10000.0) / half))
        table = torch.zeros(367, half)
        table[:, 0::2], table[:, 1::2] = angle.sin(), angle.cos()
        self.register_buffer("doy_table", table)
        self.embed_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(hidden, heads, dropout) for _ in range(layers))
        self.head = nn.Linear(hidden, num_classes or bands)
        self.classify = num_classes > 0

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        keep = batch["keep"] > 0                                                        # (B, L)
        mask = keep.unsqueeze(1).repeat(1, keep.shape[1], 1).unsqueeze(1)              # (B, 1, L, L)
        x = self.bands(batch["input"].float()).repeat(1, 1, 2)                          # (B, L, D)
        for i in range(x.shape[0]):
            x[i, :, self.half:] = self.doy_table[batch["doy"][i]]
        x = self.embed_dropout(x)
        for block in self.blocks:
            x = block(x, mask)
        if self.classify:
            return self.head(x.max(dim=1).values)                                       # max over all 64 positions
        return self.head(x)


def reference_loss(model: ReferenceSitsBert, batch: dict[str, Tensor]) -> Tensor:
    out = model(batch)
    if model.classify:
        return F.cross_entropy(out, batch["y"])
    picked = batch["picked"].unsqueeze(-1).float()                                     # (B, L, 1)
    return (F.mse_loss(out, batch["target"].float(), reduction="none") * picked).sum() / picked.sum().clamp_min(1)
