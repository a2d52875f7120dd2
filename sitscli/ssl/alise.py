"""The ALISE pretext: two temporally disjoint views of a patch series, cross-reconstruction and
invariance of their aligned representations (Dumeur, Valero, Inglada 2024, Section III).

- Views (eq. 3-4): from each series a random run of consecutive acquisitions (Table I: 60) is cut
  into windows of t_w consecutive dates (Table I: 2); even windows form X^A, odd ones X^B. Views are
  re-drawn every epoch (`on_epoch_start` seeds the draw with the epoch, so a resumed run draws the
  same views) and from a random 64 x 64 crop of each patch; validation uses centre crops and a fixed
  draw, so its loss compares across epochs.
- Cross-reconstruction (eq. 8-11): the decoder rebuilds X^B's acquisitions from Y^A (and X^A's from
  Y^B); the squared error is averaged over the bands and the VALID pixels of the rebuilt dates only:
  the validity mask enters the loss, never the input. Targets are the standardised reflectance.
- Invariance (eq. 5): MSE between the projector outputs Z^A and Z^B of the same pixels.
- Covariance (eq. 6-7): VICReg's term, c(Z) = 1/d_emb * sum over i != j of C(Z)_ij^2 with C(Z) the
  covariance of the d_emb dimensions over the batch's pixels; L_cov = c(Z^A) + c(Z^B).
- Total (eq. 2): w_rec * L_rec + w_inv * L_inv + w_cov * L_cov (Table I: 1, 1, 0).

Resolved ambiguities (each a choice, written down):
- L_rec averages the two directions (A -> B and B -> A), so its scale does not depend on there being two.
- The projector maps each query's d_model vector (one row per pixel and query); the covariance is
  taken per query over the pixels of the batch, then averaged over the n_q queries, so that the
  term decorrelates dimensions of one representation slot rather than mixing different slots.
- Candidate dates for a run are the acquisitions with at least one valid pixel in the crop (without
  `--keep-cloudy` fully clouded ones hold zeros and the encoder leaves them out anyway), or, when the
  batch keeps the cloudy values (`cloud` present), every acquisition: the paper's views are runs of
  consecutive acquisitions, clouds included, which the encoder sees raw.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sitscli.core.errors import ConfigError, DataContentError
from sitscli.models.alise import DEFAULTS, DOWNSAMPLING
from sitscli.models.temporal import real_observations

Batch = dict[str, Tensor]


def draw_views(n_dates: int, run_length: int, t_w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """eq. 3-4: positions (into 0..n_dates-1) of the two views, disjoint, together a run of consecutive dates.

    The run is `min(run_length, n_dates)` long and starts at random; windows of `t_w` dates alternate
    between view A (first, third, ...) and view B.
    """
    if n_dates < 2 * t_w:
        raise DataContentError(f"a series has {n_dates} acquisitions with valid pixels; ALISE views need at least "
                               f"2 x t_w = {2 * t_w}: use longer series or a smaller t_w")
    run = min(run_length, n_dates)
    start = int(rng.integers(0, n_dates - run + 1))
    positions = np.arange(start, start + run)
    window = (positions - start) // t_w
    return positions[window % 2 == 0], positions[window % 2 == 1]


def crop_box(height: int, width: int, size: int, rng: np.random.Generator | None) -> tuple[int, int, int, int]:
    """(row, col, h, w) of a size x size crop: random when `rng` is given, else centred. A patch
    smaller than `size` is kept whole."""
    h, w = min(size, height), min(size, width)
    if rng is None:
        return (height - h) // 2, (width - w) // 2, h, w
    return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w


def make_views(batch: Batch, run_length: int, t_w: int, crop: int, rng: np.random.Generator,
               random_crop: bool) -> tuple[Batch, Batch]:
    """Crop every patch and split its series into the two views.

    batch: values (B, T, C, H, W), valid (B, T, H, W), dates (B, T).
    Returns two batches of the same form, (B, T_A, C, h, w) and (B, T_B, C, h, w), each padded to its
    longest view with valid=False; both carry the cropped `cloud` (B, T_*, h, w) when the batch has it.
    """
    values, valid, dates = batch["values"], batch["valid"], batch["dates"]
    cloud = batch.get("cloud")
    height, width = values.shape[-2:]
    observed = (real_observations(dates, valid.flatten(2).any(-1)) if cloud is not None else None)   # (B, T)
    views: tuple[list, list] = ([], [])
    for i in range(values.shape[0]):
        row, col, h, w = crop_box(height, width, crop, rng if random_crop else None)
        v = values[i, :, :, row:row + h, col:col + w]                     # (T, C, h, w)
        m = valid[i, :, row:row + h, col:col + w]                          # (T, h, w)
        c = cloud[i, :, row:row + h, col:col + w] if cloud is not None else torch.zeros_like(m, dtype=torch.uint8)
        usable = observed[i] if observed is not None else m.flatten(1).any(1)
        candidates = torch.nonzero(usable).flatten().cpu().numpy()
        for view, positions in zip(views, draw_views(len(candidates), run_length, t_w, rng)):
            keep = torch.as_tensor(candidates[positions], device=values.device)
            view.append((v[keep], m[keep], dates[i, keep], c[keep]))
    return _stack(views[0], cloud is not None), _stack(views[1], cloud is not None)


def _stack(parts: list[tuple[Tensor, Tensor, Tensor, Tensor]], with_cloud: bool) -> Batch:
    """Pad (values (t, C, h, w), valid (t, h, w), dates (t,), cloud (t, h, w)) to the longest t and stack."""
    length = max(p[0].shape[0] for p in parts)
    values = torch.stack([F.pad(v, (0, 0, 0, 0, 0, 0, 0, length - v.shape[0])) for v, _, _, _ in parts])
    valid = torch.stack([F.pad(m, (0, 0, 0, 0, 0, length - m.shape[0])) for _, m, _, _ in parts])
    dates = torch.stack([F.pad(d, (0, length - d.shape[0]), value=int(d[-1])) for _, _, d, _ in parts])
    view = {"values": values, "valid": valid, "dates": dates}
    if with_cloud:
        view["cloud"] = torch.stack([F.pad(c, (0, 0, 0, 0, 0, length - c.shape[0])) for _, _, _, c in parts])
    return view


def reconstruction_loss(prediction: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """eq. 10-11: MSE over bands and valid pixels. prediction, target (B, T, C, H, W), valid (B, T, H, W)."""
    if not valid.any():
        return prediction.sum() * 0.0
    return ((prediction - target) ** 2).mean(2)[valid].mean()


def invariance_loss(z_a: Tensor, z_b: Tensor) -> Tensor:
    """eq. 5: mean squared difference of the two views' embeddings (same shape)."""
    return F.mse_loss(z_a, z_b)


def covariance_loss(z: Tensor) -> Tensor:
    """eq. 6-7: z (N, d) or (N, G, d) -> mean over the G groups of (1/d) sum_{i != j} C_ij^2, where C is
    the (d, d) covariance of the N samples (unbiased, 1/(N-1))."""
    z = z.reshape(z.shape[0], -1, z.shape[-1])                             # (N, G, d)
    n, _, d = z.shape
    centred = z - z.mean(0)
    cov = torch.einsum("ngi,ngj->gij", centred, centred) / (n - 1)          # (G, d, d)
    off_diagonal = cov - torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))
    return (off_diagonal ** 2).sum((-2, -1)).div(d).mean()


def embed(projector: nn.Module, y: Tensor) -> Tensor:
    """Projector on each pixel's queries: y (B, n_q, D, H, W) -> z (B*H*W, n_q, d_emb)."""
    b, n_q, d, height, width = y.shape
    rows = y.permute(0, 3, 4, 1, 2).reshape(-1, d)                        # (B*H*W*n_q, D)
    return projector(rows).reshape(b * height * width, n_q, -1)


class AliseTask:
    """The engine `Task` pre-training `sitscli.models.alise.AlisePretrain` on patch batches.

    Options (Table I defaults): t_w, run_length, w_rec, w_inv, w_cov, crop (train crop size), seed.
    """

    def __init__(self, t_w: int = DEFAULTS["t_w"], run_length: int = DEFAULTS["run_length"],
                 w_rec: float = DEFAULTS["w_rec"], w_inv: float = DEFAULTS["w_inv"], w_cov: float = DEFAULTS["w_cov"],
                 crop: int = DEFAULTS["crop"], seed: int = 0):
        if t_w < 1 or run_length < 2 * t_w:
            raise ConfigError(f"ALISE views need t_w >= 1 and run_length >= 2 x t_w (got t_w {t_w}, run_length {run_length})")
        if crop % DOWNSAMPLING:
            raise ConfigError(f"ALISE crop {crop} must be a multiple of {DOWNSAMPLING} (three 2x downsamplings): e.g. 64")
        self.t_w, self.run_length, self.crop, self.seed = t_w, run_length, crop, seed
        self.weights = {"rec": w_rec, "inv": w_inv, "cov": w_cov}
        self.on_epoch_start(0)

    @classmethod
    def from_hparams(cls, hparams: dict[str, Any], seed: int = 0) -> "AliseTask":
        """The task with the pretext options recorded in the model's hyper-parameters."""
        h = {**DEFAULTS, **hparams}
        return cls(h["t_w"], h["run_length"], h["w_rec"], h["w_inv"], h["w_cov"], h["crop"], seed)

    def on_epoch_start(self, epoch: int) -> None:
        self.train_rng = np.random.default_rng([self.seed, epoch])
        self.val_rng = np.random.default_rng([self.seed, 2**31 - 1])  # the same draw every epoch

    def losses(self, model: nn.Module, batch: Batch, rng: np.random.Generator, random_crop: bool) -> dict[str, Tensor]:
        """The three pretext losses and their weighted sum (eq. 2) under "loss"."""
        view_a, view_b = make_views(batch, self.run_length, self.t_w, self.crop, rng, random_crop)
        y_a, y_b = model.encoder(view_a), model.encoder(view_b)            # (B, n_q, D, h, w) each
        norm = model.encoder.norm
        rec = 0.5 * (reconstruction_loss(model.decoder(y_b, view_a["dates"]), norm(view_a["values"]), view_a["valid"])
                     + reconstruction_loss(model.decoder(y_a, view_b["dates"]), norm(view_b["values"]), view_b["valid"]))
        z_a, z_b = embed(model.projector, y_a), embed(model.projector, y_b)
        parts = {"rec": rec, "inv": invariance_loss(z_a, z_b), "cov": covariance_loss(z_a) + covariance_loss(z_b)}
        parts["loss"] = sum(self.weights[k] * parts[k] for k in self.weights)
        return parts

    def training_step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        parts = self.losses(model, batch, self.train_rng, random_crop=True)
        return parts["loss"], {k: float(v.detach()) for k, v in parts.items() if k != "loss"}

    @torch.no_grad()
    def validation_step(self, model: nn.Module, batch: Batch) -> dict[str, float]:
        return {k: float(v) for k, v in self.losses(model, batch, self.val_rng, random_crop=False).items()}
