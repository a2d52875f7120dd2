"""OmniSat pretext task (Astruc et al. 2024, Section 3.3): contrastive + masked multimodal reconstruction.

- Contrastive (eq. 3, MIL-NCE): every (modality m, patch p) encoder token of the batch is compared
  by cosine similarity / temperature (0.1) with every other token. Its positives are the tokens of
  the same patch in the other M - 1 modalities; the tokens of the same modality of the same tile
  (a block of the similarity matrix's diagonal, the token itself included) are left out, since
  neighbouring patches of one image look alike without being a false match; every other token of
  the batch is a negative. Loss = mean over tokens of log(sum over positives and negatives) -
  log(sum over positives). Needs M >= 2 modalities (it is 0 otherwise).
- Reconstruction (eq. 4-5): a share `mask_ratio` of the M x N tokens of each tile (drawn jointly
  over the modalities, so the masks differ across modalities and a patch may be fully masked) is
  replaced by a learned mask token; each masked token is rebuilt by its modality's decoder from its
  patch's fused embedding; the loss is the squared error over the standardised values averaged
  over the token's entries (the MSE divided by the modality's dimension), averaged over the masked
  tokens, summed over the modalities. Only valid pixels count. For optical series (Sentinel-2) only
  the top `top_dates` (25 %) of a patch's dates by L-TAE attention enter the loss, so that cloudy
  dates the encoder learnt to ignore are not rebuilt (the paper's cloud-aware date filtering).
- Total = contrastive + reconstruction; either can be switched off (`contrastive: false`,
  `reconstruction: false`), as the date filtering (`date_filter: false`): the paper's ablations.

Masks are drawn from a generator seeded by (seed, epoch), and the validation masks are the same
every epoch, so a resumed run repeats exactly and validation losses compare across epochs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sitscli.core.errors import ConfigError

Batch = dict[str, Tensor]

# 3.3 and the reference code: temperature 0.1, top 25 % dates, 75 % of the tokens masked (MAEOmni default)
DEFAULTS: dict[str, Any] = {"mask_ratio": 0.75, "temperature": 0.1, "top_dates": 0.25,
                            "contrastive": True, "reconstruction": True, "date_filter": True}
OPTICAL = ("s2",)      # series whose dates are filtered by attention (radar sees through clouds)


def contrastive_loss(tokens: Tensor, temperature: float) -> Tensor:
    """eq. 3 on encoder tokens (B, M, N, d) -> scalar; 0 (with a gradient path) when M < 2."""
    b, m, n, d = tokens.shape
    if m < 2:
        return tokens.sum() * 0.0
    features = F.normalize(tokens.float().reshape(b * m * n, d), dim=-1)
    similarity = features @ features.t() / temperature                   # (L, L), L = B*M*N, order (b, m, p)
    ids = torch.arange(b * m * n, device=tokens.device)
    tile, modality, patch = ids // (m * n), (ids // n) % m, ids % n
    same_tile = tile[:, None] == tile[None, :]
    excluded = same_tile & (modality[:, None] == modality[None, :])       # block-diagonal exclusion
    positive = same_tile & (patch[:, None] == patch[None, :]) & ~excluded
    low = torch.finfo(similarity.dtype).min
    every = torch.logsumexp(similarity.masked_fill(excluded, low), 1)     # positives + negatives
    positives = torch.logsumexp(similarity.masked_fill(~positive, low), 1)
    return (every - positives).mean()


def top_dates(attention: Tensor, keep: Tensor, share: float) -> Tensor:
    """(n, T) attention and attended dates -> (n, T) bool: the ceil(share * count) kept dates with the
    highest attention of each row (at least one when any is kept)."""
    scores = attention.masked_fill(~keep, -1.0)                            # weights are >= 0: padding sorts last
    ranks = scores.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    wanted = torch.ceil(share * keep.sum(1, keepdim=True).float()).clamp_min(1)
    return keep & (ranks < wanted)


def reconstruction_loss(prediction: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """eq. 4-5 for one modality: prediction, target (n, ...) and weight (n, ...) broadcastable bool ->
    mean over the tokens with any counted entry of their mean squared error over those entries."""
    weight = weight.expand_as(target).float()
    per_token = weight.flatten(1).sum(1)
    if prediction.numel() == 0 or not (per_token > 0).any():
        return prediction.sum() * 0.0
    error = ((prediction.float() - target.float()) ** 2 * weight).flatten(1).sum(1)
    counted = per_token > 0
    return (error[counted] / per_token[counted]).mean()


class OmniSatTask:
    """The engine `Task` pre-training `sitscli.models.omnisat.OmniSatPretrain` (options: DEFAULTS, seed)."""

    def __init__(self, mask_ratio: float = DEFAULTS["mask_ratio"], temperature: float = DEFAULTS["temperature"],
                 top_dates: float = DEFAULTS["top_dates"], contrastive: bool = DEFAULTS["contrastive"],
                 reconstruction: bool = DEFAULTS["reconstruction"], date_filter: bool = DEFAULTS["date_filter"],
                 seed: int = 0):
        if not contrastive and not reconstruction:
            raise ConfigError("omnisat pre-training needs the contrastive or the reconstruction loss: do not switch off both")
        if not 0 < mask_ratio < 1 or not 0 < top_dates <= 1 or temperature <= 0:
            raise ConfigError(f"omnisat mask_ratio must be in (0, 1), top_dates in (0, 1] and temperature > 0 "
                              f"(got {mask_ratio}, {top_dates}, {temperature})")
        self.mask_ratio, self.temperature, self.share = float(mask_ratio), float(temperature), float(top_dates)
        self.use_contrastive, self.use_reconstruction, self.date_filter = bool(contrastive), bool(reconstruction), bool(date_filter)
        self.seed = int(seed)
        self.on_epoch_start(0)

    def on_epoch_start(self, epoch: int) -> None:
        self.train_generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        self.val_generator = torch.Generator().manual_seed(self.seed * 100003 + 2**31 - 1)

    def losses(self, model: nn.Module, batch: Batch, generator: torch.Generator) -> dict[str, Tensor]:
        """con, rec, rec_<modality> and the sum of those switched on under "loss" (a loss switched off
        is still computed and logged, so that runs compare)."""
        out = model(batch, self.mask_ratio, generator)
        parts: dict[str, Tensor] = {}
        zero = out["tokens"].sum() * 0.0
        parts["con"] = contrastive_loss(out["tokens"], self.temperature)
        rec = zero
        for name in out["names"]:
            value = self.modality_loss(name, out["encoded"][name], *out["rebuilt"][name])
            parts[f"rec_{name}"] = value
            rec = rec + value
        parts["rec"] = rec
        parts["loss"] = (parts["con"] if self.use_contrastive else zero) + (rec if self.use_reconstruction else zero)
        return parts

    def modality_loss(self, name: str, encoded, prediction: Tensor, index: Tensor) -> Tensor:
        """Reconstruction loss of one modality's masked tokens (flat indices `index` into B*N)."""
        target = encoded.target.flatten(0, 1)[index]
        weight = encoded.weight.flatten(0, 1)[index]
        if name in OPTICAL and self.date_filter:
            attention = encoded.attention.flatten(0, 1)[index].detach()
            keep = encoded.keep.flatten(0, 1)[index]
            weight = weight & top_dates(attention, keep, self.share)[..., None]
        return reconstruction_loss(prediction, target, weight)

    def training_step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        parts = self.losses(model, batch, self.train_generator)
        return parts["loss"], {k: float(v.detach()) for k, v in parts.items() if k != "loss"}

    @torch.no_grad()
    def validation_step(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        return {k: float(v) for k, v in self.losses(model, batch, self.val_generator).items()}
