"""Models are found by name. A new model is one module that calls `register(ModelSpec(...))`.

`build(hparams, info)` returns an `nn.Module` whose `forward(batch)` takes a batch from
`sitscli.data.batch.collate` (raw reflectance: every model normalises its input itself with a
`BandNorm` built from `info.band_mean/band_std`, so the statistics travel inside the checkpoint).

`info` is a `sitscli.models.registry.DataInfo`: what a model must know of the data.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sitscli.core.errors import ConfigError, DataContentError


@dataclass
class DataInfo:
    """What a model needs to know about the data it is built for (saved in model.yaml)."""

    band_names: list[str]
    band_mean: list[float]          # per band, reflectance 0-1, train split
    band_std: list[float]
    class_names: list[str] = field(default_factory=list)
    class_colors: list[str] = field(default_factory=list)   # "#rrggbb", one per class
    reference_date: int | None = None  # days since epoch; models using days-since-reference need it
    # other sensors than Sentinel-2: name -> band_names, band_mean, band_std (in the sensor's unit),
    # resolution (m), footprint (per-sample block shape), unit; see sitscli.data.modalities
    modalities: dict[str, dict] = field(default_factory=dict)

    @property
    def num_bands(self) -> int:
        return len(self.band_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class ModelSpec:
    """A registered model.

    Attributes:
        name: the `--model` name.
        build: (hparams, info) -> nn.Module.
        defaults: default hyper-parameters, each with the paper table/equation it comes from
            written in the model module.
        input: "pixel" or "patch" samples.
        compact: pixel models that want only clear observations (see batch.compact_sample).
        max_len: longest series the model takes when compact (None = any).
        pretext: name of the pretext task in `sitscli.ssl` used by `sits pretrain`, or None.
        description: one line for `--help` and error messages.
        direct_fit: for models not trained by gradient descent (random forest): a function
            (train_set, hparams, info, seed) -> fitted nn.Module that `sits finetune` calls instead of
            the engine. Such a module still predicts through `forward(batch)` and saves as safetensors.
        modalities: the sensors the model cannot do without ("s2", "s1", "planetscope", "vhr").
        optional_modalities: the sensors it uses when the data has them (a multi-sensor model must
            still map from Sentinel-2 alone where the others are missing).

    A classifier module may also define `training_loss(batch) -> (loss, metrics)` when its
    objective is not cross-entropy on `forward`'s logits (the SVGP's ELBO); fine-tuning then uses it,
    and `set_training_size(n)` when the objective needs the number of training samples.
    """

    name: str
    build: Callable[[dict[str, Any], DataInfo], nn.Module]
    defaults: dict[str, Any]
    input: str = "pixel"
    compact: bool = False
    max_len: int | None = None
    pretext: str | None = None
    description: str = ""
    direct_fit: Callable[..., nn.Module] | None = None
    modalities: tuple[str, ...] = ("s2",)
    optional_modalities: tuple[str, ...] = ()

    def data_modalities(self, available: Sequence[str], chosen: Sequence[str] | None = None) -> tuple[str, ...]:
        """The sensors to feed: the required ones, then the optional ones the data has (or `chosen` of them).

        Raises a one-line error for a required sensor the data lacks, or a chosen one the model cannot use.
        """
        missing = [m for m in self.modalities if m not in available]
        if missing:
            raise DataContentError(f"model {self.name} needs {', '.join(missing)} data, which the dataset lacks "
                                   f"(it holds {', '.join(available)}): prepare it with `sits prepare s2 ... "
                                   + " ".join(f"--{m} PATH" for m in missing) + "`")
        usable = (*self.modalities, *self.optional_modalities)
        if chosen is not None:
            unusable = [m for m in chosen if m not in usable]
            if unusable:
                raise ConfigError(f"model {self.name} cannot use {', '.join(unusable)}: it uses {', '.join(usable)}")
            absent = [m for m in chosen if m not in available]
            if absent:
                raise DataContentError(f"the dataset has no {', '.join(absent)} data (it holds {', '.join(available)})")
            return tuple(dict.fromkeys((*self.modalities, *chosen)))
        return tuple(m for m in usable if m in available)


_MODELS: dict[str, ModelSpec] = {}

# Modules that register models; imported lazily so `sits --help` stays fast.
_MODEL_MODULES: tuple[str, ...] = (
    "sitscli.models.sitsbert", "sitscli.models.alise", "sitscli.models.tempcnn", "sitscli.models.ltae",
    "sitscli.models.lstm", "sitscli.models.inceptiontime", "sitscli.models.transformer", "sitscli.models.mtan_svgp",
    "sitscli.models.rf", "sitscli.models.bimodal_bert", "sitscli.models.resmlp",
)


def register(spec: ModelSpec) -> ModelSpec:
    _MODELS[spec.name] = spec
    return spec


def _load_all() -> None:
    for module in _MODEL_MODULES:
        importlib.import_module(module)


def available() -> list[str]:
    _load_all()
    return sorted(_MODELS)


def get(name: str) -> ModelSpec:
    _load_all()
    if name not in _MODELS and "+" in name:   # a base model on a pre-trained encoder, e.g. bimodal-bert+lstm
        from sitscli.models.stacked import stacked_spec

        return stacked_spec(name)
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


class BandNorm(nn.Module):
    """Standardise reflectance per band with train-split statistics; buffers go into the checkpoint.

    values (..., C, *spatial) when `channel_dim` points at C; by default the last dim is C.
    """

    def __init__(self, mean: list[float], std: list[float], channel_dim: int = -1):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).clamp_min(1e-6))
        self.channel_dim = channel_dim

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        shape = [1] * values.dim()
        shape[self.channel_dim] = -1
        return (values - self.mean.view(shape)) / self.std.view(shape)
