"""`sits probe`: linear probing of a pre-trained encoder (frozen encoder + one linear layer).

The linear-probing protocol of the ALISE paper (Dumeur et al. 2024): the encoder is
frozen and one linear layer is trained on its representation with cross-entropy, Adam at lr 1e-4
and ReduceLROnPlateau. What "its representation" is comes from the model's classifier:
- ALISE: each pixel's n_q x d_model vector (AliseClassifier's 1 x 1 convolution);
- SITS-BERT: the mean of its observation outputs (SitsBertClassifier with pooling "mean", the same
  vector as `SitsBertEncoder.represent`).
This is `sits finetune --mode frozen` with these settings as defaults (a --config file and flags
still override them), and the same report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sitscli.core.errors import ConfigError
from sitscli.models.registry import ModelSpec
from sitscli.workflows.finetune import finetune
from sitscli.workflows.pretrain import RunResult

# ALISE paper, linear probing: Adam, lr 1e-4, ReduceLROnPlateau with patience 10 and factor 0.05;
# no weight decay, no warm-up. The early-stopping patience (ours) outlasts two lr reductions, so
# that stopping never comes before the plateau schedule has acted.
PROBE_SETTINGS: dict[str, Any] = {"mode": "frozen", "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0,
                                  "schedule": "plateau", "warmup_epochs": 0.0, "plateau_patience": 10,
                                  "plateau_factor": 0.05, "patience": 25}


def probe_settings(spec: ModelSpec) -> dict[str, Any]:
    """The probing defaults for a model: mean pooling where the model lets the head choose."""
    return {**PROBE_SETTINGS, **({"pooling": "mean"} if "pooling" in spec.defaults else {})}


def probe(*, out: str | Path | None = None, config_file: str | Path | None = None, resume: str | Path | None = None,
          overwrite: bool = False, **flags: Any) -> RunResult:
    """Linear probing of the pre-trained run `from_run` on the labelled `data`; options as `finetune`."""
    if flags.get("mode") not in (None, "frozen"):
        raise ConfigError(f"sits probe trains a linear layer on a frozen encoder; for --mode {flags['mode']} "
                          f"use sits finetune")
    if resume is None and flags.get("from_run") is None and config_file is None:
        raise ConfigError("sits probe needs --from RUN: the pre-trained run whose encoder is probed")
    return finetune(out=out, config_file=config_file, resume=resume, overwrite=overwrite, protocol=probe_settings,
                    **flags)
