"""The SITS-BERT pretext: recover observations contaminated by simulated clouds and shadows.

Yuan & Lin 2021 (reference code: dataset/pretrain_dataset.py, trainer/pretrain.py). Each clear
observation of a series is picked with probability 0.15; a picked observation gets noise drawn
from U[0, 0.5] in every band, added (a cloud brightens) or subtracted (a shadow darkens) with
equal chance; its date is left as it is. The model sees the whole contaminated series and is
scored by the MSE between its prediction and the original reflectance on the picked observations
only. Labels are never read, so every sample (labeled or not) serves.

Choices where the reference leaves room:
- The reference divides the summed squared error by the number of picked observations, i.e. it
  sums over the C bands; we average over bands too, so the loss reads as a per-value MSE in
  reflectance units (a constant factor C, same optimum and gradient direction).
- Contamination is drawn on the CPU from torch's generator, so a seeded run picks the same
  observations on any device. Validation uses its own generator, reset each epoch, so that the
  validation loss is measured on the same contaminated series every epoch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

PICK_PROBABILITY = 0.15   # reference: random.random() < 0.15 per observation
MAX_NOISE = 0.5           # reference: np.random.uniform(0, 0.5) per band, sign by a fair coin


def contaminate(values: Tensor, valid: Tensor, p: float = PICK_PROBABILITY, max_noise: float = MAX_NOISE,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Add cloud/shadow noise to randomly picked clear observations.

    Args:
        values: (B, T, C) reflectance 0-1.
        valid: (B, T) bool; only these observations can be picked (padding never is).
        generator: a CPU generator (None = torch's global one).
    Returns:
        contaminated (B, T, C) on the device of `values`, picked (B, T) bool.
    """
    b, t, c = values.shape
    picked = (torch.rand(b, t, generator=generator) < p) & valid.cpu()                      # (B, T)
    sign = torch.where(torch.rand(b, t, generator=generator) < 0.5, -1.0, 1.0)              # (B, T)
    noise = torch.rand(b, t, c, generator=generator) * max_noise * sign.unsqueeze(-1)       # (B, T, C)
    noise = noise * picked.unsqueeze(-1)
    return values + noise.to(values.device, values.dtype), picked.to(values.device)


def picked_mse(prediction: Tensor, target: Tensor, picked: Tensor) -> Tensor:
    """MSE over the picked observations: prediction, target (B, T, C), picked (B, T) -> scalar.

    Zero (still attached to the graph) when nothing was picked, e.g. a batch of very short series.
    """
    if not picked.any():
        return prediction.sum() * 0.0
    return ((prediction - target) ** 2)[picked].mean()


class ContaminationTask:
    """The engine `Task` for pre-training a model that maps a batch to predicted reflectance (B, T, C)."""

    def __init__(self, p: float = PICK_PROBABILITY, max_noise: float = MAX_NOISE, val_seed: int = 0):
        self.p, self.max_noise, self.val_seed = p, max_noise, val_seed
        self._val_generator = torch.Generator().manual_seed(val_seed)

    def on_epoch_start(self, epoch: int) -> None:
        self._val_generator.manual_seed(self.val_seed)

    def _loss(self, model: nn.Module, batch: dict[str, Tensor], generator) -> tuple[Tensor, Tensor]:
        contaminated, picked = contaminate(batch["values"], batch["valid"], self.p, self.max_noise, generator)
        prediction = model({**batch, "values": contaminated})
        return picked_mse(prediction, batch["values"], picked), picked

    def training_step(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        loss, picked = self._loss(model, batch, None)
        return loss, {"picked": picked.sum().item() / max(1, int(batch["valid"].sum()))}

    @torch.no_grad()
    def validation_step(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, float]:
        loss, _ = self._loss(model, batch, self._val_generator)
        return {"loss": loss.item()}
