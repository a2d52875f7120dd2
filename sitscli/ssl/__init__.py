"""Pretext tasks for `sits pretrain`, found by the name a model's spec gives (`ModelSpec.pretext`).

Each entry is "module:factory"; the factory takes the pretext's options as keywords and returns
an engine `Task` (training_step / validation_step / on_epoch_start). Imported lazily.
"""

from __future__ import annotations

import importlib
from typing import Any

from sitscli.core.errors import ConfigError

PRETEXTS: dict[str, str] = {
    "contamination": "sitscli.ssl.contamination:ContaminationTask",
    "alise": "sitscli.ssl.alise:AliseTask",
    "omnisat": "sitscli.ssl.omnisat:OmniSatTask",
    "bimodal": "sitscli.ssl.bimodal:BimodalTask",
    "bimodal-contrastive": "sitscli.ssl.bimodal_contrastive:BimodalContrastiveTask",
}


def make_pretext(name: str, **options: Any):
    """Build the pretext task `name` with keyword options."""
    if name not in PRETEXTS:
        raise ConfigError(f"unknown pretext task {name!r}: choose one of {', '.join(sorted(PRETEXTS))}")
    module, factory = PRETEXTS[name].split(":")
    return getattr(importlib.import_module(module), factory)(**options)
