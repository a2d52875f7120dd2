"""`sits models [NAME]`: the registered models, and one model's hyper-parameters with their types,
defaults, allowed values and sources, plus its paper optimisation settings."""

from __future__ import annotations

from typing import Any

from sitscli.models import registry
from sitscli.workflows.pretrain import model_training_defaults


def list_models() -> list[dict[str, Any]]:
    """One entry per model: name, input kind, pretext task (or None), description."""
    return [{"name": spec.name, "input": spec.input, "pretext": spec.pretext, "description": spec.description}
            for spec in map(registry.get, registry.available())]


def describe_model(name: str) -> dict[str, Any]:
    """A model's description, its hyper-parameters (default, allowed, source) and training settings."""
    spec = registry.get(name)
    hparams = [{"name": key, "default": default, "allowed": allowed, "source": spec.sources.get(key)}
               for key, (_, default, allowed) in registry.hparam_fields(spec).items()]
    training = {stage: model_training_defaults(spec, stage) for stage in ("pretrain", "finetune", "scratch", "lora")}
    return {"name": spec.name, "input": spec.input, "pretext": spec.pretext, "description": spec.description,
            "hparams": hparams, "training": {stage: values for stage, values in training.items() if values}}
