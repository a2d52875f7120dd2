"""The bi-modal BERT pretext: masked Sentinel-2 dates regress PlanetScope, plus month and cloud tasks.

Patnala, Schultz & Gall 2025 (Front. Remote Sens. 6:1555887); the model is
`sitscli.models.bimodal_bert`. Per batch:

- Masking (BERT, Devlin et al. 2019): each Sentinel-2 date that carries data (clear or cloudy:
  cloudy observations stay in the input) is selected with probability `mask_rate`. A selected date's
  values are replaced by random values (share `random_share`), by the values of another observation
  drawn from the batch, i.e. from the data distribution (share `sample_share`), or left unchanged (the
  rest). Defaults 0.15 and 80/10/10, BERT's; the paper sweeps the rate. Dates keep their day.
- PlanetScope regression (`ps_loss`): the model predicts, from each selected date's output, the
  PlanetScope block (4 bands x 3 x 3 pixels of 3.3 m) at the matching PlanetScope date and at the
  `ps_steps` - 1 PlanetScope dates before it (`ps_steps` 1 or 3, the paper's ablation). The matching
  date is the latest PlanetScope acquisition on or before the Sentinel-2 date, at most `ps_window`
  days before it (PlanetScope is near-daily; 2 days tolerate a missed day or two). MSE in
  standardised PlanetScope units, averaged over the steps and over the clear target values only:
  a missing step or a cloudy 3 m pixel contributes neither loss nor gradient.
- Seasonal loss (`season_loss`): the outputs averaged per calendar month, a linear classifier
  predicts the month; cross-entropy over the months present in each series.
- Cloud loss (`cloud_loss`): a separate subset of the dates with data (not selected for masking, each
  with probability `cloud_rate`), a linear classifier predicts their Sentinel-2 cloud level (0-31);
  cross-entropy. Needs a dataset prepared with `--keep-cloudy` (cloud levels stored).
- Total: the sum of the losses switched on (each can be switched off: the paper's Table 2
  ablations); each is logged (train_ps / val_ps, train_season..., train_cloud...).

Choices where the paper leaves room (written down):
- "Random values" are drawn per band from a normal law with the batch's per-band mean and standard
  deviation of the dates with data (the scale of the data, not its joint distribution); "values from
  the data distribution" are a whole observation (all bands) of a random date with data of the batch.
- The seasonal average includes the masked dates (their outputs are the model's all the same).
- Randomness comes from torch's CPU generator (seeded runs repeat on any device); validation uses a
  generator reset every epoch, so its losses compare across epochs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sitscli.core.errors import ConfigError, DataContentError
from sitscli.models.bimodal_bert import PS_STEPS

Batch = dict[str, Tensor]
PREPARE_HINT = "`sits prepare s2 L2A --labels ... --planetscope DIR --keep-cloudy`"


def observed_dates(values: Tensor, valid: Tensor) -> Tensor:
    """(B, T) bool: Sentinel-2 dates that carry data: clear ones, and cloudy ones whose values were
    kept (`--keep-cloudy`); padding and no-data dates hold zeros. values (B, T, C), valid (B, T)."""
    return valid | (values != 0).any(-1)


def bert_mask(values: Tensor, observed: Tensor, rate: float, random_share: float, sample_share: float,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Select dates and replace their values, BERT-style.

    Args:
        values: (B, T, C) reflectance; observed: (B, T) bool, the only dates that can be selected.
    Returns:
        corrupted (B, T, C), selected (B, T) bool, kind (B, T) int8: 0 random values, 1 values of a
        random observation of the batch, 2 unchanged (meaningful where selected).
    """
    b, t, c = values.shape
    cpu_values, cpu_observed = values.detach().float().cpu(), observed.cpu()
    selected = (torch.rand(b, t, generator=generator) < rate) & cpu_observed
    draw = torch.rand(b, t, generator=generator)
    kind = torch.full((b, t), 2, dtype=torch.int8)
    kind[draw < random_share + sample_share] = 1
    kind[draw < random_share] = 0
    pool = cpu_values[cpu_observed]                                           # (n, C) observations of the batch
    if pool.shape[0] == 0:
        return values, selected.to(values.device), kind.to(values.device)
    mean, std = pool.mean(0), pool.std(0, unbiased=False)
    random_values = mean + std * torch.randn(b, t, c, generator=generator)
    sampled = pool[torch.randint(pool.shape[0], (b, t), generator=generator)]  # (B, T, C)
    corrupted = torch.where((selected & (kind == 0)).unsqueeze(-1), random_values, cpu_values)
    corrupted = torch.where((selected & (kind == 1)).unsqueeze(-1), sampled, corrupted)
    return corrupted.to(values.device, values.dtype), selected.to(values.device), kind.to(values.device)


def ps_targets(dates: Tensor, ps_dates: Tensor, steps: int, window: int) -> tuple[Tensor, Tensor]:
    """Which PlanetScope acquisitions each Sentinel-2 date regresses.

    Args:
        dates: (B, T) Sentinel-2 days; ps_dates: (B, T2) PlanetScope days, increasing, padding
            repeating the last one (as `collate` and the store pad).
    Returns:
        index (B, T, steps) into the PlanetScope axis (step 0 the matching acquisition, step s the s-th
        before it) and exists (B, T, steps) bool (False: no matching date within `window` days, or
        fewer than s acquisitions before it).
    """
    ps_dates = ps_dates.contiguous()
    latest = torch.searchsorted(ps_dates, dates.contiguous(), right=True) - 1          # (B, T), -1 = none before
    latest_day = ps_dates.gather(1, latest.clamp_min(0))
    # padding repeats the last day: go back to that day's first (real) position
    first = torch.searchsorted(ps_dates, latest_day.contiguous(), right=False)         # (B, T)
    matched = (latest >= 0) & (dates - latest_day <= window)
    index = first.unsqueeze(-1) - torch.arange(steps, device=dates.device)             # (B, T, steps)
    return index.clamp_min(0), matched.unsqueeze(-1) & (index >= 0)


def ps_regression_loss(prediction: Tensor, reference: Tensor, ps_clear: Tensor, index: Tensor, exists: Tensor,
                       selected: Tensor) -> Tensor:
    """MSE over the clear PlanetScope target values of the selected dates.

    Args:
        prediction: (B, T, S, n) predicted values of S steps; reference: (B, T2, n) the PlanetScope
            series; ps_clear: (B, T2, n) bool, the target values that are clear; index, exists:
            (B, T, S) from `ps_targets`; selected: (B, T) the masked dates.
    A value outside the mask is never read into the loss (boolean selection, not a zero weight), so
    it contributes no gradient whatever it holds. Zero, still attached to the graph, when no target.
    """
    b, t, s, n = prediction.shape
    rows = index.reshape(b, t * s, 1).expand(-1, -1, n)
    target = reference.gather(1, rows).view(b, t, s, n)
    clear = ps_clear.gather(1, rows).view(b, t, s, n)
    use = clear & exists.unsqueeze(-1) & selected[:, :, None, None]
    if not use.any():
        return prediction.sum() * 0.0
    return ((prediction - target) ** 2)[use].mean()


def month_cross_entropy(logits: Tensor, present: Tensor) -> Tensor:
    """Cross-entropy of the month classifier: logits (B, 12, 12) (row m: month m's mean output),
    present (B, 12). Target of row m is m."""
    if not present.any():
        return logits.sum() * 0.0
    months = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
    return F.cross_entropy(logits[present].float(), months[present])


def cloud_cross_entropy(logits: Tensor, cloud: Tensor, picked: Tensor) -> Tensor:
    """Cross-entropy of the cloud-level classifier on the picked dates: logits (B, T, 32), cloud (B, T)
    levels 0-31, picked (B, T)."""
    if not picked.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[picked].float(), cloud[picked].long())


class BimodalTask:
    """The engine `Task` pre-training `bimodal-bert` (see the module docstring for the options)."""

    def __init__(self, mask_rate: float = 0.15, random_share: float = 0.8, sample_share: float = 0.1,
                 ps_loss: bool = True, ps_steps: int = PS_STEPS, ps_window: int = 2, season_loss: bool = True,
                 cloud_loss: bool = True, cloud_rate: float = 0.15, val_seed: int = 0):
        if not 0 < mask_rate < 1 or not 0 < cloud_rate < 1 or mask_rate + cloud_rate > 1:
            raise ConfigError(f"bimodal pretext: mask_rate ({mask_rate}) and cloud_rate ({cloud_rate}) must be in "
                              f"(0, 1) and sum to at most 1")
        if random_share < 0 or sample_share < 0 or random_share + sample_share > 1:
            raise ConfigError(f"bimodal pretext: random_share ({random_share}) and sample_share ({sample_share}) "
                              f"must be >= 0 and sum to at most 1 (the rest stays unchanged)")
        if ps_steps not in range(1, PS_STEPS + 1) or ps_window < 0:
            raise ConfigError(f"bimodal pretext: ps_steps must be 1 to {PS_STEPS} (got {ps_steps}) and "
                              f"ps_window >= 0 days (got {ps_window})")
        if not (ps_loss or season_loss or cloud_loss):
            raise ConfigError("bimodal pretext: every loss is switched off; keep at least one of ps_loss, "
                              "season_loss, cloud_loss")
        self.mask_rate, self.random_share, self.sample_share = mask_rate, random_share, sample_share
        self.ps_loss, self.ps_steps, self.ps_window = bool(ps_loss), int(ps_steps), int(ps_window)
        self.season_loss, self.cloud_loss, self.cloud_rate = bool(season_loss), bool(cloud_loss), cloud_rate
        self.val_seed = val_seed
        self._val_generator = torch.Generator().manual_seed(val_seed)

    def check_data(self, prepared) -> None:
        """Refuse, before training, a dataset that lacks what the switched-on losses need."""
        if self.ps_loss and "planetscope" not in prepared.modalities:
            raise DataContentError(f"{prepared.path} has no PlanetScope data, which the bimodal-bert pretext regresses: "
                                   f"prepare it with {PREPARE_HINT} (or pass --pretext ps_loss=false)")
        if self.cloud_loss and not prepared.keep_cloudy:
            raise DataContentError(f"{prepared.path} was prepared without --keep-cloudy, so it has no cloud levels for "
                                   f"the cloud loss: prepare it with {PREPARE_HINT} (or pass --pretext cloud_loss=false)")

    def on_epoch_start(self, epoch: int) -> None:
        self._val_generator.manual_seed(self.val_seed)

    def _losses(self, model: nn.Module, batch: Batch, generator) -> tuple[dict[str, Tensor], Tensor]:
        if self.ps_loss and "ps_values" not in batch:
            raise DataContentError(f"the batch has no PlanetScope values for the PlanetScope loss: prepare the data "
                                   f"with {PREPARE_HINT}")
        if self.cloud_loss and "cloud" not in batch:
            raise DataContentError(f"the batch has no cloud levels for the cloud loss: prepare the data with {PREPARE_HINT}")
        observed = observed_dates(batch["values"], batch["valid"])
        corrupted, selected, _ = bert_mask(batch["values"], observed, self.mask_rate, self.random_share,
                                           self.sample_share, generator)
        # the cloud subset: dates with data not selected for masking, cloud_rate of the dates with data
        rest = torch.rand(observed.shape, generator=generator).to(observed.device) < self.cloud_rate / (1 - self.mask_rate)
        picked = rest & observed & ~selected
        out = model({**batch, "values": corrupted, "observed": observed})
        losses = {}
        if self.ps_loss:
            index, exists = ps_targets(batch["dates"], batch["ps_dates"], self.ps_steps, self.ps_window)
            clear = batch["ps_valid"].unsqueeze(2).expand(*batch["ps_values"].shape).flatten(2)   # (B, T2, n)
            losses["ps"] = ps_regression_loss(out["ps"][:, :, :self.ps_steps], out["ps_reference"], clear, index,
                                              exists, selected)
        if self.season_loss:
            losses["season"] = month_cross_entropy(out["month_logits"], out["month_present"])
        if self.cloud_loss:
            losses["cloud"] = cloud_cross_entropy(out["cloud_logits"], batch["cloud"], picked)
        return losses, selected.sum() / observed.sum().clamp_min(1)

    def training_step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        losses, masked = self._losses(model, batch, None)
        logs = {name: loss.item() for name, loss in losses.items()}
        return sum(losses.values()), {**logs, "masked": masked.item()}

    @torch.no_grad()
    def validation_step(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        losses, _ = self._losses(model, batch, self._val_generator)
        return {"loss": sum(losses.values()).item(), **{name: loss.item() for name, loss in losses.items()}}
