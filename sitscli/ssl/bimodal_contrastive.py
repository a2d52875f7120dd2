"""The bi-modal contrastive pretext of `resmlp-contrastive`: Sentinel-2 and PlanetScope spectra of the
same place and date are positive pairs, every other pairing of the batch a negative.

Patnala, Stadtler, Schultz & Gall 2024 (Front. Remote Sens. 5:1480101). Per batch of pixel series,
one pair per pixel is drawn at random among its candidates: a clear Sentinel-2 date and a PlanetScope
acquisition at most `max_gap` days from it (0: the same day) with at least one clear 3 m pixel. The
model projects both spectra; the loss is the symmetric InfoNCE (CLIP's form, Radford et al. 2021) over
the pairs of the batch with temperature `temperature`: cross-entropy of each Sentinel-2 projection
against all PlanetScope ones, and the reverse, averaged. Pixels without a candidate sit the batch out.

Choices (written down): temperature 0.1 (SimCLR's range, Chen et al. 2020); one pair per pixel and
batch, so a batch of B pixels gives B - 1 negatives per pair. Validation draws from a generator reset
every epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sitscli.core.errors import ConfigError, DataContentError

Batch = dict[str, Tensor]


def draw_pairs(dates: Tensor, valid: Tensor, ps_dates: Tensor, ps_valid: Tensor, max_gap: int,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One random (Sentinel-2 date, PlanetScope date) pair per pixel.

    Args:
        dates (B, T), valid (B, T); ps_dates (B, T2), ps_valid (B, T2, h, w).
    Returns:
        pair_s2 (B,), pair_ps (B,) indices and ok (B,) bool (False: the pixel has no candidate pair).
    """
    ps_clear = ps_valid.flatten(2).any(-1)                                           # (B, T2)
    near = (dates.unsqueeze(2) - ps_dates.unsqueeze(1)).abs() <= max_gap             # (B, T, T2)
    candidate = (near & valid.unsqueeze(2) & ps_clear.unsqueeze(1)).cpu()
    b, t, t2 = candidate.shape
    score = torch.where(candidate, torch.rand(b, t, t2, generator=generator), torch.tensor(-1.0))
    best = score.flatten(1).argmax(1)                                                # (B,)
    device = dates.device
    return (best // t2).to(device), (best % t2).to(device), candidate.flatten(1).any(1).to(device)


def info_nce(s2: Tensor, ps: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE of unit-norm projections s2, ps (N, P): pair i is positive for row i."""
    logits = s2.float() @ ps.float().T / temperature                                 # (N, N)
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class BimodalContrastiveTask:
    """The engine `Task` pre-training `resmlp-contrastive`."""

    def __init__(self, temperature: float = 0.1, max_gap: int = 0, val_seed: int = 0):
        if temperature <= 0 or max_gap < 0:
            raise ConfigError(f"bimodal-contrastive pretext: temperature must be > 0 (got {temperature}) and "
                              f"max_gap >= 0 days (got {max_gap})")
        self.temperature, self.max_gap, self.val_seed = temperature, int(max_gap), val_seed
        self._val_generator = torch.Generator().manual_seed(val_seed)

    def check_data(self, prepared) -> None:
        if "planetscope" not in prepared.modalities:
            raise DataContentError(f"{prepared.path} has no PlanetScope data, which the contrastive pretext pairs with "
                                   f"Sentinel-2: prepare it with `sits prepare s2 L2A --labels ... --planetscope DIR`")

    def on_epoch_start(self, epoch: int) -> None:
        self._val_generator.manual_seed(self.val_seed)

    def _loss(self, model: nn.Module, batch: Batch, generator) -> tuple[Tensor, Tensor]:
        if "ps_values" not in batch:
            raise DataContentError("the batch has no PlanetScope values to pair with Sentinel-2: prepare the data "
                                   "with `sits prepare s2 ... --planetscope DIR`")
        pair_s2, pair_ps, ok = draw_pairs(batch["dates"], batch["valid"], batch["ps_dates"], batch["ps_valid"],
                                          self.max_gap, generator)
        out = model({**batch, "pair_s2": pair_s2, "pair_ps": pair_ps})
        if ok.sum() < 2:                     # no negative to contrast with
            return out["s2"].sum() * 0.0, ok.float().mean()
        return info_nce(out["s2"][ok], out["ps"][ok], self.temperature), ok.float().mean()

    def training_step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        loss, paired = self._loss(model, batch, None)
        return loss, {"paired": paired.item()}

    @torch.no_grad()
    def validation_step(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        loss, _ = self._loss(model, batch, self._val_generator)
        return {"loss": loss.item()}
