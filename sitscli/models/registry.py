"""Models are found by name. A new model is one module that calls `register(ModelSpec(...))`.

`build(hparams, info)` returns an `nn.Module` whose `forward(batch)` takes a batch from
`sitscli.data.batch.collate` (raw reflectance: every model normalises its input itself with a
`BandNorm` built from `info.band_mean/band_std`, so the statistics travel inside the checkpoint).

`info` is a `sitscli.models.registry.DataInfo`: what a model must know of the data.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model
from torch import nn

from sitscli.core.config import validated
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
    # Added later, so with defaults (checkpoints written before them still load):
    class_codes: list[int] = field(default_factory=list)    # source code of each class (map pixel values); [] = ids
    train_period: list[int] = field(default_factory=list)   # [first, last] date of the training data, days since epoch
    # other sensors than Sentinel-2: name -> band_names, band_mean, band_std (in the sensor's unit),
    # resolution (m), footprint (per-sample block shape), unit; see sitscli.data.modalities
    modalities: dict[str, dict] = field(default_factory=dict)
    # the training data kept Sentinel-2 values under clouds (`prepare --keep-cloudy`): inputs at
    # inference must be read the same way (raw reflectance under clouds, not 0)
    keep_cloudy: bool = False

    @property
    def num_bands(self) -> int:
        return len(self.band_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(eq=False)      # hashed by identity: the hyper-parameter schema is cached per spec
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
        day_of_year: the model places observations by day of year, so dates a year apart look
            the same (a model with a `positions` hyper-parameter says so through it instead).
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
    day_of_year: bool = False
    modalities: tuple[str, ...] = ("s2",)
    optional_modalities: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)   # hyper-parameter -> paper table/section it comes from

    def folds_years(self, hparams: dict[str, Any]) -> bool:
        """Whether the model, with these hyper-parameters, maps dates onto the day of year."""
        if "positions" in self.defaults:
            return hparams.get("positions", self.defaults["positions"]) in ("doy", "season")
        return self.day_of_year
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

    def check_hparams(self, hparams: Mapping[str, Any], error: Callable[[str], Exception] = ConfigError) -> dict[str, Any]:
        """The given hyper-parameters, typed and checked against `hparam_fields` -> the same keys with
        their values converted ("64" -> 64); an unknown key or a value out of range raises `error`
        with one line."""
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise error(f"unknown {self.name} hyper-parameter {unknown[0]!r}: known "
                        f"{', '.join(sorted(self.defaults)) or 'none'} (see sits models {self.name})")
        checked = validated(_schema(self), {**self.defaults, **hparams}, f"{self.name} hyper-parameter", error)
        return {key: getattr(checked, key) for key in hparams}


# Hyper-parameters are typed from their defaults: an integer counts or sizes something (>= 1), a
# float is a finite value >= 0, a list of integers holds sizes (each >= 1), a default of None is a
# count set later (num_data). These names have bounds of their own.
_BOUNDS: dict[str, dict[str, Any]] = {
    "dropout": {"ge": 0, "lt": 1},           # a probability; 1 would drop every unit
    "attention_dropout": {"ge": 0, "lt": 1},
    "n_jobs": {"ge": -1},                     # scikit-learn: -1 = every core
    "n_trees": {"ge": 0}, "depth": {"ge": 0},  # the random forest's shape, 0 until it is fitted
    "grid_step": {"gt": 0},                   # days between grid dates
}


def _choices() -> dict[str, tuple[str, ...]]:
    """Text hyper-parameters with a fixed set of values (imported here: those modules import this one)."""
    from sitscli.models.heads import POOLINGS
    from sitscli.models.temporal import POSITIONS

    return {"pooling": POOLINGS, "positions": POSITIONS}


def hparam_fields(spec: "ModelSpec") -> dict[str, tuple[Any, Any, str]]:
    """name -> (type, default, allowed values in words) of each hyper-parameter of `spec`."""
    return {name: _typed(name, default) for name, default in spec.defaults.items()}


def _typed(name: str, default: Any) -> tuple[Any, Any, str]:
    bounds = _BOUNDS.get(name, {})
    words = _bound_words(bounds)
    choices = _choices().get(name)
    if choices:
        return Literal[choices], default, "one of " + ", ".join(choices)
    if isinstance(default, bool):
        return bool, default, "true or false"
    if isinstance(default, int):
        bounds = bounds or {"ge": 1}
        return Annotated[int, Field(**bounds)], default, f"integer {_bound_words(bounds)}"
    if isinstance(default, float):
        bounds = bounds or {"ge": 0}
        return Annotated[float, Field(allow_inf_nan=False, **bounds)], default, f"number {_bound_words(bounds)}"
    if isinstance(default, list) and all(isinstance(v, int) for v in default):
        return list[Annotated[int, Field(ge=1)]], default, "list of integers >= 1"
    if default is None:
        return Annotated[int, Field(ge=1)] | None, None, "integer >= 1, or null (set from the data)"
    if isinstance(default, str):
        return str, default, "text"
    return Any, default, words or "any"


def _bound_words(bounds: dict[str, Any]) -> str:
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{signs[k]} {v}" for k, v in bounds.items())


@functools.cache
def _schema(spec: "ModelSpec") -> type[BaseModel]:
    fields = {name: (kind, default) for name, (kind, default, _) in hparam_fields(spec).items()}
    return create_model(f"{spec.name}_hparams", __config__=ConfigDict(extra="forbid", protected_namespaces=()), **fields)


_MODELS: dict[str, ModelSpec] = {}

# Modules that register models; imported lazily so `sits --help` stays fast.
_MODEL_MODULES: tuple[str, ...] = (
    "sitscli.models.sitsbert", "sitscli.models.alise", "sitscli.models.tempcnn", "sitscli.models.ltae",
    "sitscli.models.lstm", "sitscli.models.inceptiontime", "sitscli.models.transformer", "sitscli.models.mtan_svgp",
    "sitscli.models.rf", "sitscli.models.omnisat", "sitscli.models.bimodal_bert", "sitscli.models.resmlp",
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
