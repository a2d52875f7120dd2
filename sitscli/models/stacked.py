"""A pre-trained encoder's per-date outputs fed to a base classifier: the models named `ENCODER+BASE`.

`sits finetune --from RUN --model lstm` trains, on top of the pre-trained encoder of RUN, the base
model `lstm` (or `inceptiontime`, `transformer`, any registered pixel classifier): the base model reads
the encoder's per-date representation (B, T, D) in place of the bands, with the dates and the dates
the encoder read as its `dates` and `valid`. That is the downstream setup of the bi-modal BERT paper
(Patnala et al. 2025: the frozen BERT representation fed to LSTM, InceptionTime and Transformer); `--mode full` also fine-tunes the encoder, `--mode frozen` keeps it fixed.

The run is saved under the model name `ENCODER+BASE` (e.g. `bimodal-bert+lstm`) with hyper-parameters
`{"encoder": ..., "base": ...}`; `registry.get` builds that spec on demand, so `load_model` and
`sits predict-map` rebuild it like any other model. An encoder qualifies when its pre-training model
has an `encoder` with `represent_series(batch) -> (features (B, T, D), read (B, T) bool)` and a
`width` D. The base model gets a `DataInfo` of D feature "bands" with mean 0 and std 1 (its BandNorm is
then the identity: the encoder's outputs are already layer-normalised).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from sitscli.core.errors import ConfigError
from sitscli.models import registry
from sitscli.models.registry import DataInfo, ModelSpec

SEPARATOR = "+"


def split_name(name: str) -> tuple[str, str] | None:
    """"bimodal-bert+lstm" -> ("bimodal-bert", "lstm"); None for a plain model name."""
    encoder, sep, base = name.partition(SEPARATOR)
    return (encoder, base) if sep else None


def stacked_name(encoder: str, base: str) -> str:
    return f"{encoder}{SEPARATOR}{base}"


class EncoderThenBase(nn.Module):
    """batch -> encoder's per-date outputs -> base classifier: logits (B, K)."""

    def __init__(self, encoder: nn.Module, base: nn.Module):
        super().__init__()
        self.encoder, self.base = encoder, base

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        features, read = self.encoder.represent_series(batch)              # (B, T, D), (B, T)
        return self.base({**batch, "values": features, "valid": read})


def feature_info(width: int, info: DataInfo) -> DataInfo:
    """What the base model is built for: `width` standardised features, the data's classes."""
    return DataInfo([f"f{i}" for i in range(width)], [0.0] * width, [1.0] * width, class_names=list(info.class_names),
                    class_colors=list(info.class_colors), reference_date=info.reference_date)


def stacked_spec(name: str) -> ModelSpec:
    """The spec of `ENCODER+BASE`; one-line errors for parts that cannot be stacked."""
    encoder_name, base_name = split_name(name)
    encoder_spec, base_spec = registry.get(encoder_name), registry.get(base_name)
    if encoder_spec.pretext is None:
        raise ConfigError(f"model {name}: {encoder_name} is not a pre-trained encoder (it has no pretext task)")
    if base_spec.pretext is not None or base_spec.direct_fit is not None or base_spec.input != "pixel" \
            or split_name(base_name):
        raise ConfigError(f"model {name}: {base_name} cannot run on an encoder's outputs; choose a pixel classifier "
                          f"trained by gradient descent, e.g. lstm, inceptiontime or transformer")

    def build(hparams: dict[str, Any], info: DataInfo) -> nn.Module:
        unclassed = DataInfo(list(info.band_names), list(info.band_mean), list(info.band_std),
                             reference_date=info.reference_date, modalities=dict(info.modalities),
                             keep_cloudy=info.keep_cloudy)
        encoder = getattr(encoder_spec.build(dict(hparams.get("encoder") or {}), unclassed), "encoder", None)
        if not hasattr(encoder, "represent_series"):
            raise ConfigError(f"model {encoder_name} gives no per-date representation to feed {base_name}: fine-tune it "
                              f"with its own head (leave out --model)")
        return EncoderThenBase(encoder, base_spec.build(dict(hparams.get("base") or {}), feature_info(encoder.width, info)))

    return ModelSpec(
        name=name, build=build, defaults={"encoder": dict(encoder_spec.defaults), "base": dict(base_spec.defaults)},
        input=encoder_spec.input, compact=encoder_spec.compact, max_len=encoder_spec.max_len,
        modalities=encoder_spec.modalities,   # the encoder reads Sentinel-2; other sensors served pre-training only
        description=f"{base_name} on the per-date outputs of a pre-trained {encoder_name} encoder")
