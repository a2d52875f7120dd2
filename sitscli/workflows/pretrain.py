"""`sits pretrain`: self-supervised pre-training of a registered model with its pretext task.

Options resolve as: engine `TrainConfig` defaults < the model's paper settings (`TRAINING` in its
module) < `--config FILE.yaml` < flags. The resolved options are saved as `RUN/config.yaml`.

A run directory is finished when it holds `model.yaml` (written last, by `save_model`). Until
then it may hold `config.yaml`, the engine's logs and `resume/`, and `--resume RUN` continues it.
Every input is checked before the directory is made; a run that fails before its first epoch
is saved is removed, so a bad input leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from torch.utils.data import Dataset, Subset

from sitscli.core.config import dump_yaml, load_yaml, resolve, validated
from sitscli.core.dates import iso
from sitscli.core.errors import ConfigError, DataContentError, OutputExistsError
from sitscli.core.io import atomic_output, check_output, lock_output, require_exists
from sitscli.core.progress import log
from sitscli.data.batch import collate
from sitscli.data.modalities import parse_modalities
from sitscli.data.prepared import Prepared, open_prepared
from sitscli.data.torchdata import SeriesDataset
from sitscli.engine.checkpoint import CARD, save_model
from sitscli.engine.signals import StopRequested
from sitscli.engine.trainer import FitResult, TrainConfig, fit, seed_everything
from sitscli.models import registry
from sitscli.models.registry import DataInfo, ModelSpec
from sitscli.ssl import make_pretext

CONFIG = "config.yaml"
YEAR_DAYS = 366      # a dataset whose last date is this many days after its first spans more than one year
RESUME = "resume"
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))

Fraction = Annotated[float, Field(gt=0, lt=1)]
PathText = Annotated[str, BeforeValidator(os.fspath)]    # a path given as text or as a Path


class PretrainOptions(BaseModel):
    """Options of `sits pretrain` besides the TrainConfig fields, typed (unknown keys refused)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    data: PathText | None = None
    model: str = "sitsbert"
    hparams: dict[str, Any] = {}        # checked against the model's own schema (registry)
    pretext: dict[str, Any] = {}
    # share of the training samples held out to watch the pretext loss when the dataset has no
    # `val` split (3 %: the reference code's valid_rate)
    val_fraction: Fraction = 0.03
    modalities: str | None = None         # the sensors to feed ("s2,s1,vhr"); None = every one the model can use


@dataclass
class RunResult:
    """What a training command made."""

    run_dir: Path
    fit: FitResult
    trainable_parameters: int
    report: dict | None = None      # test-split report (fine-tuning)

    @property
    def interrupted(self) -> bool:
        return self.fit.interrupted


def is_main_process() -> bool:
    """Rank 0 of a torchrun job, or the only process: the one that writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def model_training_defaults(spec: ModelSpec, stage: str) -> dict[str, Any]:
    """The paper's optimisation settings a model module declares as `TRAINING[stage]` (may be empty),
    with a model's own ones on top when the module registers several (`TRAINING_BY_MODEL[name][stage]`)."""
    module = importlib.import_module(spec.build.__module__)
    own = getattr(module, "TRAINING_BY_MODEL", {}).get(spec.name, {}).get(stage, {})
    return {**getattr(module, "TRAINING", {}).get(stage, {}), **own}


def resolve_run_options(schema: type[BaseModel], stage_defaults, flags: Mapping[str, Any],
                        config_file: str | Path | None, resume: str | Path | None) -> dict[str, Any]:
    """defaults < (a resumed run's saved config) < --config < flags given (None = not given), every
    value checked against TrainConfig and the command's `schema` (one line naming key, value and range).
    `epochs` given (flag or file) without `min_total_steps` turns the model's `min_total_steps` off.

    `stage_defaults(model_name) -> dict` gives the model's own settings once its name is known.
    """
    file_values: dict[str, Any] = {}
    if resume is not None:
        file_values.update(load_yaml(require_run_config(Path(resume))))
    if config_file:
        file_values.update(load_yaml(config_file))
    defaults = {**dataclasses.asdict(TrainConfig()), **schema().model_dump()}
    model = flags.get("model") or file_values.get("model") or defaults.get("model")
    if model:
        defaults.update(stage_defaults(model))
    options = resolve(defaults, file_values, flags)
    given = set(file_values) | {k for k, v in flags.items() if v is not None}
    if "epochs" in given and "min_total_steps" not in given:
        # the epochs asked for are the epochs run: a model's minimum of steps raises its own default only
        options["min_total_steps"] = None
    engine = validated(TrainConfig, {k: v for k, v in options.items() if k in TRAIN_FIELDS})
    command = validated(schema, {k: v for k, v in options.items() if k not in TRAIN_FIELDS})
    return {**dataclasses.asdict(engine), **command.model_dump()}


def require_run_config(run_dir: Path) -> Path:
    require_exists(run_dir, "run directory to resume")
    if is_main_process():
        lock_output(run_dir)
    if (run_dir / CARD).is_file():
        raise ConfigError(f"{run_dir} is a finished run (it has {CARD}): nothing to resume; start a new run with --out")
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"{run_dir} is not a sitscli run (no {CONFIG}): give the folder of an interrupted run")
    return run_dir / CONFIG


def is_unstarted_run(run_dir: Path) -> bool:
    """A run directory stopped (even by kill -9) before its first saved state: `config.yaml` alone.
    Nothing in it is worth keeping, so both `--out` and `--resume` start it again."""
    return run_dir.is_dir() and [p.name for p in run_dir.iterdir()] == [CONFIG]


def check_run_output(out: str | Path | None, overwrite: bool) -> Path:
    """The output run directory (locked), refused when it exists (unless --overwrite or unstarted)."""
    if out is None:
        raise ConfigError("--out RUN is required: the folder to write the run to")
    out = Path(out)
    if not is_main_process():   # rank 0 checks and makes the directory; the other ranks may find it made
        return out
    lock_output(out)
    if out.exists() and not overwrite and (out / RESUME).is_dir() and not (out / CARD).is_file():
        raise OutputExistsError(f"{out} holds an interrupted run: continue it with --resume {out}, or pass --overwrite")
    if is_unstarted_run(out):
        log(f"{out} holds a run stopped before its first save: starting it again")
        overwrite = True
    return check_output(out, overwrite)


def train_config(options: Mapping[str, Any]) -> TrainConfig:
    """The engine's part of options resolved (and checked) by `resolve_run_options`."""
    return TrainConfig(**{name: options[name] for name in TRAIN_FIELDS})


def resumes_training(run_dir: Path, resume: str | Path | None) -> bool:
    """Whether the engine continues a saved state: --resume of a run stopped before its first save
    starts the training from the beginning, with the run's saved options."""
    if resume is None:
        return False
    if not (run_dir / RESUME).is_dir():
        log(f"{run_dir} was stopped before its first save: starting its training from the beginning")
        return False
    return True


@contextlib.contextmanager
def run_directory(run_dir: Path, options: Mapping[str, Any], *, resume: bool) -> Iterator[Path]:
    """Make (or reuse, on resume) the run directory and save the resolved options in it.

    A new directory appears complete (made under a temporary name with its config.yaml, then
    renamed). If the body fails before the engine saved a resumable state, a new directory is
    removed again; on a stop signal the CLI's line says whether a state was kept.
    """
    created = not resume
    if is_main_process():
        if created:
            with atomic_output(run_dir, overwrite=True) as tmp:   # --overwrite was checked before
                tmp.mkdir()
                dump_yaml(dict(options), tmp / CONFIG)
        else:
            dump_yaml(dict(options), run_dir / CONFIG)
    try:
        yield run_dir
    except BaseException as exc:
        kept = (run_dir / RESUME).is_dir()
        if created and is_main_process() and not kept:
            shutil.rmtree(run_dir, ignore_errors=True)
        if kept and isinstance(exc, StopRequested):
            exc.keep(f"the last saved state is kept; continue with --resume {run_dir}")
        raise


def series_dataset(prepared: Prepared, spec: ModelSpec, splits: tuple[str, ...], *,
                   labeled_only: bool, modalities: Sequence[str] | None = None) -> SeriesDataset:
    """The samples of `splits` with the sensors to feed: `modalities` (chosen, checked) or all the model can use."""
    return SeriesDataset(prepared, splits=splits, labeled_only=labeled_only, compact=spec.compact,
                         max_len=spec.max_len, modalities=spec.data_modalities(prepared.modalities, modalities))


def fed_modalities(prepared: Prepared, spec: ModelSpec, chosen: str | Sequence[str] | None) -> tuple[str, ...]:
    """The sensors a run feeds the model: `chosen` ("s2,s1" or a list; None = all it can use), checked."""
    if chosen is not None and not isinstance(chosen, str):
        chosen = ",".join(chosen)
    return spec.data_modalities(prepared.modalities, parse_modalities(chosen))


def check_input_kind(prepared: Prepared, spec: ModelSpec) -> None:
    if prepared.mode != spec.input:
        raise DataContentError(
            f"{prepared.path} holds {prepared.mode} samples but model {spec.name} takes {spec.input} samples: "
            f"prepare the data in {spec.input} mode")


def warn_folded_years(prepared: Prepared, spec: ModelSpec, hparams: Mapping[str, Any]) -> None:
    """Say so when the dataset spans more than a year and the model reads dates as days of the year:
    two observations a year apart then look the same to it."""
    first, last = prepared.ds.attrs.get("date_min"), prepared.ds.attrs.get("date_max")
    if first is None or last - first < YEAR_DAYS or not spec.folds_years(dict(hparams)):
        return
    hint = ("give --hparam positions=reference to count days since the season start (the dataset's first date) instead"
            if "positions" in spec.defaults else
            "this model has no other time axis: prepare one season per dataset (sits prepare --dates START:END)")
    log(f"warning: {prepared.path.name} spans {iso(first)} to {iso(last)} ({last - first + 1} days) but {spec.name} "
        f"folds dates onto the day of year, so observations a year apart look alike; {hint}")


def hold_out(dataset: SeriesDataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split a dataset at random into (train, validation) with `fraction` in validation (at least 1)."""
    n = len(dataset)
    if not 0 < fraction < 1 or n < 2:
        raise DataContentError("no validation samples: give the dataset a val split, or set val_fraction in (0, 1) "
                               "with at least 2 training samples")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(fraction * n)))
    return Subset(dataset, order[n_val:].tolist()), Subset(dataset, order[:n_val].tolist())


def count_trainable(parameters) -> int:
    return sum(p.numel() for p in parameters if p.requires_grad)


def pretrain(*, out: str | Path | None = None, config_file: str | Path | None = None,
             resume: str | Path | None = None, overwrite: bool = False, **flags: Any) -> RunResult:
    """Pre-train `model` on `data` with its pretext task; flags are options (None = not given).

    Trains on the `train` and `unlabeled` splits, labels ignored; watches the pretext loss on
    `val` (or on `val_fraction` of the training samples when there is no val split). The test
    split is never seen, so a later fine-tuning report stays a fair test.
    """
    options = resolve_run_options(PretrainOptions, lambda m: model_training_defaults(registry.get(m), "pretrain"),
                                  flags, config_file, resume)
    run_dir = Path(resume) if resume is not None else check_run_output(out, overwrite)
    if options["data"] is None:
        raise ConfigError("give the prepared dataset to pre-train on (DATA argument or `data:` in --config)")
    prepared = open_prepared(options["data"])
    options["data"] = str(Path(prepared.path).resolve())
    spec = registry.get(options["model"])
    options["hparams"] = spec.check_hparams(options["hparams"])
    if spec.pretext is None:
        raise ConfigError(f"model {spec.name} has no pretext task: train it directly with `sits finetune --model {spec.name}`")
    check_input_kind(prepared, spec)
    warn_folded_years(prepared, spec, {**spec.defaults, **options["hparams"]})
    fed = fed_modalities(prepared, spec, options["modalities"])
    full = prepared.info()
    info = DataInfo(full.band_names, full.band_mean, full.band_std, reference_date=full.reference_date,
                    modalities={m: a for m, a in full.modalities.items() if m in fed},  # no classes
                    keep_cloudy=full.keep_cloudy)
    cfg = train_config(options)
    task = make_pretext(spec.pretext, **options["pretext"])
    if hasattr(task, "check_data"):       # a pretext that needs more than the series (another sensor...)
        task.check_data(prepared)
    seed_everything(cfg.seed)             # the initial weights repeat with --seed
    model = spec.build(dict(options["hparams"]), info)

    train_set: Dataset = series_dataset(prepared, spec, ("train", "unlabeled"), labeled_only=False, modalities=fed)
    if len(train_set) == 0:
        raise DataContentError(f"the train and unlabeled splits of {prepared.path} are empty: nothing to pre-train on")
    val_set: Dataset = series_dataset(prepared, spec, ("val",), labeled_only=False, modalities=fed)
    if len(val_set) == 0:
        train_set, val_set = hold_out(train_set, options["val_fraction"], cfg.seed)

    with run_directory(run_dir, options, resume=resume is not None):
        log(f"pre-training {spec.name} ({count_trainable(model.parameters()):,} parameters) with the "
            f"{spec.pretext} pretext on {len(train_set):,} samples, validating on {len(val_set):,}")
        result = fit(model, task, train_set, val_set, collate, cfg, run_dir, resume=resumes_training(run_dir, resume))
        if not result.interrupted and is_main_process():
            save_model(run_dir, model, model_name=spec.name, hparams={**spec.defaults, **options["hparams"]},
                       info=info, task="pretrain", dataset_fingerprint=prepared.fingerprint,
                       extra={"pretext": spec.pretext, "pretext_options": options["pretext"], "modalities": list(fed),
                              "best_epoch": result.best_epoch, "best_val_loss": result.best_metric})
    return RunResult(run_dir, result, count_trainable(model.parameters()))
