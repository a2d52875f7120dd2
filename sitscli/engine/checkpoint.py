"""Run checkpoints: `RUN/model.safetensors` (weights) + `RUN/model.yaml` (everything else).

Never pickle: a run downloaded from the internet must not be able to run code when loaded, so the
weights are safetensors and the description is YAML read with `safe_load`. model.yaml records the
sha256 of the weights file, so a truncated, swapped or edited file is refused with one clear line
instead of loading into a model that silently predicts garbage.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors_into
from safetensors.torch import save_model as save_safetensors_from
from torch import nn

from sitscli import __version__
from sitscli.core.config import dump_yaml, validated
from sitscli.core.errors import CheckpointError, SitsError
from sitscli.core.io import atomic_output
from sitscli.models import registry
from sitscli.models.registry import DataInfo

WEIGHTS = "model.safetensors"
CARD = "model.yaml"
FORMAT = "sitscli-run/1"


@dataclass
class ModelCard:
    """What model.yaml says about a run: enough to rebuild the model and check it fits the data."""

    model_name: str
    hparams: dict
    info: DataInfo
    task: str                       # "pretrain", "classify", ... (set by the workflow that trained it)
    extra: dict = field(default_factory=dict)
    dataset_fingerprint: str | None = None
    sitscli_version: str = __version__
    weights_sha256: str | None = None
    run_dir: Path | None = None


def save_model(run_dir: Path, model: nn.Module, *, model_name: str, hparams: dict, info: DataInfo, task: str,
               extra: dict | None = None, dataset_fingerprint: str | None = None) -> None:
    """Write model.safetensors then model.yaml (with the weights' sha256), each atomically.

    `model` must be the bare module (not DDP-wrapped); tied weights are stored once.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(run_dir / WEIGHTS, overwrite=True) as tmp:
        # One metadata entry: safetensors writes the metadata map in a random order per process, so
        # two entries would make identical runs differ byte-wise (the tensors themselves are sorted).
        save_safetensors_from(model, str(tmp), metadata={"sitscli": f"{FORMAT} {model_name}"})
        digest = _sha256(tmp)
    card = {
        "format": FORMAT,
        "model": model_name,
        "task": task,
        "sitscli_version": __version__,
        "dataset_fingerprint": dataset_fingerprint,
        "weights": {"file": WEIGHTS, "sha256": digest},
        "hparams": hparams,
        "data": dataclasses.asdict(info),
        "extra": extra or {},
    }
    with atomic_output(run_dir / CARD, overwrite=True) as tmp:
        dump_yaml(card, tmp)


Text = Annotated[str, BeforeValidator(str)]   # a version or fingerprint YAML may have read as a number


class _Weights(BaseModel):
    file: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Data(BaseModel):
    """DataInfo as model.yaml stores it: every key present (a truncated card lacks the last ones)."""

    band_names: list[str]
    band_mean: list[float]
    band_std: list[float]
    class_names: list[str]
    class_colors: list[str]
    reference_date: int | None
    # added later, so optional: cards written before them still load
    class_codes: list[int] = []
    train_period: list[int] = []
    modalities: dict[str, dict[str, Any]] = {}
    keep_cloudy: bool = False

    @model_validator(mode="after")
    def _one_value_per_name(self) -> "_Data":
        if not len(self.band_names) == len(self.band_mean) == len(self.band_std):
            raise ValueError("one mean and one std per band are needed")
        if self.class_colors and len(self.class_colors) != len(self.class_names):
            raise ValueError("one colour per class (or none) is needed")
        if self.class_codes and len(self.class_codes) != len(self.class_names):
            raise ValueError("one code per class (or none) is needed")
        return self


class _Card(BaseModel):
    """model.yaml: every key is required, so a card cut short is told apart from damaged weights."""

    model_config = ConfigDict(protected_namespaces=())
    format: Literal[FORMAT]
    model: str
    task: str
    sitscli_version: Text
    dataset_fingerprint: Text | None
    weights: _Weights
    hparams: dict[str, Any]
    data: _Data
    extra: dict[str, Any]


def read_card(run_dir: Path) -> ModelCard:
    """Read and check RUN/model.yaml (the weights are not touched). `run_dir` may also name a file inside it."""
    run_dir = _run_dir_of(Path(run_dir))
    path = run_dir / CARD
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise CheckpointError(f"{path} is not valid YAML (cut short, or edited): copy the run again, or train it again") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a sitscli model card (format {FORMAT!r} expected)")
    card = validated(_Card, raw, "entry", lambda problem: CheckpointError(
        f"{path} is incomplete or damaged ({problem}): copy the run again, or train it again"))
    hparams = card.hparams
    if card.model in registry.available():      # an unknown model is refused by load_model, saying so
        hparams = registry.get(card.model).check_hparams(hparams, lambda problem: CheckpointError(
            f"{path}: {problem}; the card was edited, or made by another sitscli version"))
    return ModelCard(
        model_name=card.model,
        hparams=hparams,
        info=DataInfo(**card.data.model_dump()),
        task=card.task,
        extra=card.extra,
        dataset_fingerprint=card.dataset_fingerprint,
        sitscli_version=card.sitscli_version,
        weights_sha256=card.weights.sha256,
        run_dir=run_dir,
    )


def load_model(run_dir: Path, device: str | torch.device = "cpu", *,
               model_name: str | None = None) -> tuple[nn.Module, ModelCard]:
    """Rebuild the run's model through the registry, load and verify its weights, eval mode.

    `model_name`, when given, is the model the caller needs: a run made for another is refused.
    """
    card = read_card(run_dir)
    if model_name is not None and card.model_name != model_name:
        raise CheckpointError(
            f"{card.run_dir} holds a {card.model_name!r} model, not {model_name!r}: give a run of {model_name} "
            f"or use --model {card.model_name}")
    try:
        spec = registry.get(card.model_name)
    except SitsError:
        raise CheckpointError(
            f"{card.run_dir} was made with model {card.model_name!r}, which this sitscli "
            f"({__version__}, run made by {card.sitscli_version}) does not know") from None
    weights = card.run_dir / WEIGHTS
    _verify_weights(weights, card.weights_sha256)
    model = spec.build(card.hparams, card.info)
    try:
        missing, unexpected = load_safetensors_into(model, str(weights), strict=False)
    except SafetensorError as exc:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({exc}): train the run again") from None
    except RuntimeError as exc:  # shapes that do not fit the rebuilt model
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc))
        raise CheckpointError(f"{weights} does not fit a {card.model_name} built from model.yaml: {first}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not fit a {card.model_name} built from model.yaml: "
            f"missing {_few(missing)}, unexpected {_few(unexpected)}")
    return model.to(device).eval(), card


def check_bands(card: ModelCard, band_names: list[str]) -> None:
    """Refuse data whose bands are not the model's, in the model's order, and say what differs."""
    expected = list(card.info.band_names)
    if list(band_names) == expected:
        return
    lacking = [b for b in expected if b not in band_names]
    extra = [b for b in band_names if b not in expected]
    if lacking or extra:
        parts = ([f"lacks {', '.join(lacking)}"] if lacking else []) + ([f"has extra {', '.join(extra)}"] if extra else [])
        raise CheckpointError(
            f"the data's bands do not fit model {card.run_dir}: it {' and '.join(parts)} "
            f"(model bands: {', '.join(expected)}); prepare the data with these bands")
    raise CheckpointError(
        f"the data's bands are in another order than model {card.run_dir} expects: "
        f"{', '.join(band_names)} vs {', '.join(expected)}; prepare the data with --bands {','.join(expected)}")


def input_options(card: ModelCard) -> dict:
    """`open_source` options that read a model's input as its training data was read: with the values
    under clouds kept when it was trained on such data (a one-line error names the model when the
    input has no cloud information)."""
    if not card.info.keep_cloudy:
        return {}
    return {"keep_cloudy": True, "keep_cloudy_for": f"model {card.run_dir}, trained on values kept under clouds "
                                                    "(prepare --keep-cloudy),"}


def check_modalities(card: ModelCard, offered: Sequence[str]) -> None:
    """Refuse data that lacks a sensor the run's model cannot do without, saying how to get it."""
    needed = registry.get(card.model_name).modalities
    missing = [m for m in needed if m not in offered]
    if missing:
        raise CheckpointError(
            f"model {card.run_dir} ({card.model_name}) needs {', '.join(missing)} data, which the input lacks "
            f"(it offers {', '.join(offered)}): prepare the data with " + " ".join(f"--{m} PATH" for m in missing))


def check_classes(card: ModelCard, class_names: list[str]) -> None:
    """Refuse labelled data whose class list is not the classifier's (ids would mean other classes)."""
    expected = list(card.info.class_names)
    if list(class_names) != expected:
        raise CheckpointError(
            f"the data's classes ({', '.join(class_names) or 'none'}) are not those of model {card.run_dir} "
            f"({', '.join(expected) or 'none'}): evaluate it on data prepared with the same classes")


def _run_dir_of(path: Path) -> Path:
    if path.is_file() and path.name in (CARD, WEIGHTS):
        return path.parent
    if not path.exists():
        raise CheckpointError(f"run directory not found: {path} (give the folder written by sits pretrain or finetune)")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a run directory: give the folder that holds {CARD} and {WEIGHTS}")
    if not (path / CARD).is_file():
        hint = " (training was interrupted: continue it with --resume)" if (path / "resume").is_dir() else ""
        raise CheckpointError(f"{path} is not a finished run: it has no {CARD}{hint}")
    return path


def weights_status(card: ModelCard) -> str:
    """'verified', 'missing', or 'changed' (the file does not match the checksum in model.yaml)."""
    path = card.run_dir / WEIGHTS
    if not path.is_file():
        return "missing"
    return "verified" if _sha256(path) == card.weights_sha256 else "changed"


def _verify_weights(path: Path, sha256: str | None) -> None:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the run is incomplete, train it again")
    if sha256 is None:
        raise CheckpointError(f"{path.parent / CARD} records no weights checksum: the run is damaged, train it again")
    if _sha256(path) != sha256:
        raise CheckpointError(
            f"{path} does not match the checksum in {CARD}: the file was changed, truncated or swapped "
            f"(copy the run again, or train it again)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _few(names: list[str], limit: int = 4) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")

