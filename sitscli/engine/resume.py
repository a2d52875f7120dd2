"""Resumable training state, `RUN/resume/`: tensors in state.safetensors, everything else in state.json.

Nothing is pickled. The optimizer state is flattened to `optim.<param index>.<name>` tensors plus
its JSON-able param groups; random generator states (python, numpy, torch, CUDA) are stored as lists
of integers, one entry per rank. The folder is written to a temporary name and renamed, so a kill
during the save leaves the previous state intact.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sitscli.core.config import validated
from sitscli.core.errors import CheckpointError, ConfigError
from sitscli.core.io import atomic_output

TENSORS, META = "state.safetensors", "state.json"


Count = Annotated[int, Field(ge=0)]


class _Meta(BaseModel):
    """state.json as the engine writes it (trainer._Run._save); other keys are left to the engine."""

    epoch: Count
    samples_done: Count
    epoch_seconds: float
    batch_size: Annotated[int, Field(ge=1)]
    best_metric: float
    best_epoch: Count
    bad_epochs: Count
    stopped_early: bool
    finished: bool
    history: list[dict[str, Any]]
    train_mean: dict[str, Any]
    schedule: dict[str, Any]
    rng: list[dict[str, Any]]
    world_size: Annotated[int, Field(ge=1)]
    config: dict[str, Any]
    optimizer: dict[str, Any]
    has_best: bool


def rng_state() -> dict:
    """This process's random generator states, JSON-able."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(mt), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_state(resume_dir: Path, *, model_state: dict, optimizer_state: dict, best_state: dict | None,
               meta: dict) -> None:
    """Write the whole state atomically; `meta` holds the JSON-able rest (epoch, history, RNG...)."""
    tensors = {f"model.{k}": _cpu_copy(v) for k, v in model_state.items()}
    tensors.update({f"best.{k}": _cpu_copy(v) for k, v in (best_state or {}).items()})
    optim_tensors, optim_meta = _flatten_optimizer(optimizer_state)
    tensors.update(optim_tensors)
    meta = dict(meta, optimizer=optim_meta, has_best=best_state is not None)
    with atomic_output(resume_dir, overwrite=True) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / TENSORS))
        (tmp / META).write_text(json.dumps(meta))


def load_state(resume_dir: Path) -> tuple[dict, dict, dict | None, dict]:
    """-> model state, optimizer state, best weights (or None), meta."""
    if not (resume_dir / META).is_file():
        raise ConfigError(f"nothing to resume in {resume_dir.parent}: it has no resume/ state (start without --resume)")
    damaged = f"the resume state in {resume_dir} is damaged"
    try:
        meta = json.loads((resume_dir / META).read_text())
        tensors = load_file(str(resume_dir / TENSORS))
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"{damaged} ({exc}): start again without --resume") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{damaged} ({META} holds no mapping): start again without --resume")
    validated(_Meta, meta, "entry", lambda problem: CheckpointError(f"{damaged} ({problem}): start again without --resume"))
    model = _strip(tensors, "model.")
    best = _strip(tensors, "best.") if meta["has_best"] else None
    optimizer = _unflatten_optimizer(_strip(tensors, "optim."), meta.pop("optimizer"))
    return model, optimizer, best, meta


def _cpu_copy(t: torch.Tensor) -> torch.Tensor:
    # A copy, so tensors that share memory (tied weights) are stored apart, as safetensors requires.
    return t.detach().to("cpu", copy=True).contiguous()


def _strip(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _flatten_optimizer(state: dict) -> tuple[dict, dict]:
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = _cpu_copy(value)
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    per_param: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    return {"state": per_param, "param_groups": meta["param_groups"]}
