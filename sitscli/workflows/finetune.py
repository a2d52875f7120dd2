"""`sits finetune`: train a classifier, from a pre-trained encoder (`--from RUN`) or from scratch.

Options resolve as: engine `TrainConfig` defaults < FinetuneOptions < the model's paper settings
(`TRAINING["finetune"]` in its module, plus `TRAINING["scratch"]` without `--from` and
`TRAINING["lora"]` with `--mode lora`) < a protocol's
settings (`sits probe`) < `--config FILE.yaml` < flags. The resolved options are saved as
`RUN/config.yaml`. `epochs` given (flag or file) turns off a model's `min_total_steps` (the minimum
of optimizer steps that raises its default epochs on small training sets), unless given too.

With `--from RUN --model BASE` (a base classifier such as lstm, inceptiontime or transformer), BASE is
trained on the per-date outputs of RUN's encoder: the model `ENCODER+BASE` of `sitscli.models.stacked`,
with BASE's own training settings and `--hparam` options.

Modes (LoRA: Hu et al. 2021):
- full: every weight trains.
- frozen: only the classification head trains; the encoder is a fixed feature extractor, kept in
  eval mode (dropout off, BatchNorm statistics fixed) so that its features do not drift.
- lora: low-rank adapters on the encoder's attention (and optionally feed-forward) layers plus the
  head train; the base weights stay bitwise as loaded. The adapters are merged on export, so the
  saved run is a plain classifier that loads without any LoRA code. The adapters train at `lr`
  (the model's LoRA rate, e.g. SITS-BERT's 1e-5) and the new, randomly initialised head at
  `head_lr`, by default the model's fine-tuning rate: at an adapter's rate a new head barely moves
  in a few epochs (issue 11: OA stayed at its initial value).

`head_lr` (any mode) trains the head (every parameter outside `encoder.`) at its own rate; by
default it is `lr`, except in lora mode.

The best epoch is chosen on validation overall accuracy (`monitor: val_oa`, max): SITS-BERT's
reference code keeps the epoch with the best validation accuracy, and accuracy is what the report
scores. `val_oa` is averaged over batches weighted by their number of samples, so for patch models
it weights patches, not pixels (close enough to choose an epoch).

The run is scored on the test split (the val split when there is none: an optimistic figure, since
it also chose the epoch) and the report (metrics.json, per_class.csv, confusion.png) is written
beside the model. `eval_date_shift` adds the OA with every acquisition date moved by each delta
(days), the robustness test of the mTAN-SVGP paper (Fig. 12).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from sitscli.core.errors import CheckpointError, ConfigError, DataContentError
from sitscli.core.io import check_output
from sitscli.core.progress import log
from sitscli.data.batch import collate
from sitscli.data.modalities import S2
from sitscli.data.prepared import Prepared, open_prepared
from sitscli.data.torchdata import SeriesDataset
from sitscli.engine.checkpoint import (ModelCard, check_bands, check_classes, check_modalities, load_model, read_card,
                                      save_model)
from sitscli.engine.device import resolve_device
from sitscli.engine.metrics import (classification_report, multilabel_report, predict_labels, predict_multilabel,
                                    report_summary, write_report)
from sitscli.engine.trainer import FitResult, ParamGroup, TrainConfig, fit, seed_everything
from sitscli.models import registry
from sitscli.models.heads import POOLINGS
from sitscli.models.lora import DEFAULT_ALPHA, DEFAULT_DROPOUT, DEFAULT_RANK, DEFAULT_TARGETS, apply_lora, merge_lora, parse_targets
from sitscli.models.registry import DataInfo, ModelSpec
from sitscli.models.stacked import split_name, stacked_name
from sitscli.workflows.pretrain import (Fraction, PathText, RunResult, check_input_kind, check_run_output,
                                        fed_modalities, is_main_process, model_training_defaults,
                                        resolve_run_options, resumes_training, run_directory, series_dataset,
                                        train_config, warn_folded_years)

MODES = ("full", "frozen", "lora")
CLASS_WEIGHTS = ("none", "balanced")
# Below about 10 training samples a class's decision region and its accuracy figures are mostly
# noise (a rule of thumb, not a paper's figure).
MIN_CLASS_SAMPLES = 10


class FinetuneOptions(BaseModel):
    """Options of `sits finetune` besides the TrainConfig fields, typed (unknown keys refused)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    data: PathText | None = None
    model: str | None = None
    from_run: PathText | None = None
    mode: Literal[MODES] = "full"
    hparams: dict[str, Any] = {}        # checked against the model's own schema (registry)
    pooling: Literal[POOLINGS] | None = None
    lora_rank: Annotated[int, Field(ge=1)] = DEFAULT_RANK
    lora_alpha: Annotated[float, Field(gt=0, allow_inf_nan=False)] = DEFAULT_ALPHA
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = DEFAULT_DROPOUT
    lora_targets: str = DEFAULT_TARGETS
    # the head's lr (None: `lr`, and in lora mode the model's fine-tuning lr; module docstring)
    head_lr: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    class_weights: Literal[CLASS_WEIGHTS] = "none"
    eval_date_shift: list[int] | str = []     # days, or "0,1,2" (parse_shifts)
    # share of the training parcels (groups) held out for choosing the epoch when the dataset has
    # no val split; not from a paper: 10 % keeps most labels for training
    val_fraction: Fraction = 0.1
    modalities: str | None = None         # the sensors to feed ("s2,s1,vhr"); None = every one the model can use


# The epoch kept is the one of the best validation accuracy (module docstring).
FINETUNE_MONITOR: dict[str, Any] = {"monitor": "val_oa", "monitor_mode": "max"}


class ClassificationTask:
    """Cross-entropy on the logits, labels -1 ignored (unlabelled pixels of a patch).

    logits (B, K) with y (B,), or (B, K, H, W) with y (B, H, W). `own_loss(batch) -> (loss, logs)`
    replaces the cross-entropy in training when the classifier defines `training_loss` (the SVGP's ELBO).
    """

    def __init__(self, class_weights: Tensor | None = None, own_loss: Callable | None = None):
        self.class_weights, self.own_loss = class_weights, own_loss

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if not (y >= 0).any():                       # a batch of unlabelled pixels only: nothing to learn
            return logits.sum() * 0.0
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(logits.float(), y, weight=weight, ignore_index=-1)

    def training_step(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        if self.own_loss is not None:
            return self.own_loss(batch)
        return self._loss(model(batch), batch["y"]), {}

    @torch.no_grad()
    def validation_step(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, float]:
        logits, y = model(batch), batch["y"]
        labelled = y >= 0
        correct = (logits.argmax(1) == y)[labelled]
        return {"loss": self._loss(logits, y).item(), "oa": correct.float().mean().item() if correct.numel() else 0.0}


class MultiLabelTask:
    """Tile classification (several classes per sample): binary cross-entropy of the logits (B, K)
    against `y_tile` (B, K), the classes present in each sample. `oa` is the share of right
    (sample, class) decisions at probability 0.5."""

    def training_step(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        return F.binary_cross_entropy_with_logits(model(batch).float(), batch["y_tile"].float()), {}

    @torch.no_grad()
    def validation_step(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, float]:
        logits, target = model(batch).float(), batch["y_tile"]
        return {"loss": F.binary_cross_entropy_with_logits(logits, target.float()).item(),
                "oa": ((logits > 0) == target).float().mean().item()}


class FrozenEncoder(nn.Module):
    """Trains a classifier whose `encoder` stays in eval mode whatever `train()` asks.

    Wraps the classifier only while training (its state-dict keys get the prefix `classifier.`).
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.classifier(batch)

    def train(self, mode: bool = True) -> "FrozenEncoder":
        super().train(mode)
        self.classifier.encoder.eval()
        return self


def finetune(*, out: str | Path | None = None, config_file: str | Path | None = None,
             resume: str | Path | None = None, overwrite: bool = False,
             protocol: Callable[[ModelSpec], dict[str, Any]] | None = None, **flags: Any) -> RunResult:
    """Train a classifier on the labelled `data` and report on its test split; flags are options
    (None = not given), see FinetuneOptions and TrainConfig.

    `protocol(spec) -> defaults` adds settings above the model's own (e.g. `sits probe`'s).
    """
    options, spec, from_card = _resolve(flags, config_file, resume, protocol)
    run_dir = Path(resume) if resume is not None else check_run_output(out, overwrite)
    if options["data"] is None:
        raise ConfigError("give the labelled prepared dataset to fine-tune on (DATA argument or `data:` in --config)")
    prepared = open_prepared(options["data"])
    options["data"] = str(Path(prepared.path).resolve())
    _check_options(options, spec, from_card)
    check_input_kind(prepared, spec)
    _check_labelled(prepared)
    if from_card is not None:
        check_bands(from_card, prepared.band_names)
        check_modalities(from_card, prepared.modalities)
    fed = _fed(prepared, spec, options["modalities"], from_card)
    cfg = train_config(options)
    train_set = series_dataset(prepared, spec, ("train",), labeled_only=True, modalities=fed)
    if len(train_set) == 0:
        raise DataContentError(f"the train split of {prepared.path} has no labelled sample: nothing to fine-tune on")
    report_split(prepared, spec, warn=False, modalities=fed)   # refuse before training when there is nothing to report on
    val_set: Dataset = series_dataset(prepared, spec, ("val",), labeled_only=True, modalities=fed)
    if len(val_set) == 0:
        train_set, val_set = hold_out_groups(train_set, prepared, options["val_fraction"], cfg.seed)

    info = _classifier_info(prepared, from_card, fed)
    hparams = _fit_inducing_points(_hparams(options, spec, from_card), spec, len(train_set))
    warn_folded_years(prepared, spec, {**spec.defaults, **hparams})
    warn_scarce_classes(prepared)
    seed_everything(cfg.seed)             # the head's (and adapters') initial weights repeat too
    classifier = spec.build(hparams, info)
    if from_card is not None:
        load_encoder(classifier, from_card)
    if hasattr(classifier, "set_training_size"):   # models whose objective needs N (the SVGP's ELBO)
        classifier.set_training_size(len(train_set))
    _check_single_process(spec, classifier)
    trained, trainable = _prepare_mode(classifier, options)
    task = (MultiLabelTask() if getattr(classifier, "multilabel", False) else
            ClassificationTask(class_weights(prepared, options["class_weights"]), getattr(classifier, "training_loss", None)))
    n_trainable = sum(p.numel() for params, _ in trainable for p in params)

    with run_directory(run_dir, options, resume=resume is not None):
        log(f"fine-tuning {spec.name} ({options['mode']}, {n_trainable:,} trainable parameters"
            f"{', from ' + str(from_card.run_dir) if from_card else ', from scratch'}) on {len(train_set):,} samples, "
            f"validating on {len(val_set):,}")
        if spec.direct_fit is not None:
            classifier = spec.direct_fit(train_set, hparams, info, cfg.seed)
            result = FitResult(best_epoch=0, best_metric=float("nan"))
        else:
            result = fit(trained, task, train_set, val_set, collate, cfg, run_dir,
                         resume=resumes_training(run_dir, resume), trainable=trainable)
        if result.interrupted or not is_main_process():
            return RunResult(run_dir, result, n_trainable)
        if options["mode"] == "lora":
            merge_lora(classifier)
        report = evaluate(classifier, prepared, spec, info.class_names, date_shifts=options["eval_date_shift"],
                          device=_device_of(classifier, cfg.device), batch_size=cfg.batch_size, modalities=fed)
        write_report(run_dir, report, info.class_names)
        extra = {"mode": options["mode"], "from_run": str(from_card.run_dir) if from_card else None, "modalities": list(fed),
                 "patch_size": prepared.patch_size,
                 f"best_{cfg.monitor}": result.best_metric, "best_epoch": result.best_epoch,   # monitor epoch: an int
                 "planned_epochs": result.planned_epochs,
                 f"{report['split']}_oa": report["oa"]}
        if options["mode"] == "lora":
            extra["lora"] = {k: options[f"lora_{k}"] for k in ("rank", "alpha", "dropout", "targets")} | {"merged": True}
        save_model(run_dir, classifier.cpu(), model_name=spec.name, hparams={**spec.defaults, **hparams}, info=info,
                   task="classify", dataset_fingerprint=prepared.fingerprint, extra=extra)
    log(f"{spec.name} on the {report['split']} split: {report_summary(report)}")
    return RunResult(run_dir, result, n_trainable, report=report)


def _resolve(flags: Mapping[str, Any], config_file, resume, protocol) -> tuple[dict, ModelSpec, ModelCard | None]:
    """Resolve the options in two passes: the model and the --from run decide the paper defaults."""
    first = resolve_run_options(FinetuneOptions, lambda _: dict(FINETUNE_MONITOR), flags, config_file, resume)
    from_card = read_card(Path(first["from_run"])) if first["from_run"] else None
    model = first["model"] or (from_card.model_name if from_card else None)
    if model is None:
        raise ConfigError("give --from RUN (a pre-trained run) to fine-tune, or --model M to train from scratch")
    if from_card is not None and model != from_card.model_name:
        model = _on_pretrained(model, from_card)
    spec = registry.get(model)
    parts = split_name(model)
    training_spec = registry.get(parts[1]) if parts else spec   # a stacked base model trains as it does alone

    def stage_defaults(_: str) -> dict[str, Any]:
        defaults = {**FINETUNE_MONITOR, **model_training_defaults(training_spec, "finetune")}
        if from_card is None:
            defaults.update(model_training_defaults(spec, "scratch"))
        if first["mode"] == "lora":     # a model's own LoRA recipe (e.g. SITS-BERT's lower lr)
            defaults.update(model_training_defaults(spec, "lora"))
        defaults.update(protocol(spec) if protocol else {})
        return defaults

    options = resolve_run_options(FinetuneOptions, stage_defaults, {**flags, "model": model}, config_file, resume)
    stacked = split_name(spec.name)   # ENCODER+BASE: --hparam options are the base model's
    options["hparams"] = (registry.get(stacked[1]) if stacked else spec).check_hparams(options["hparams"])
    if from_card is not None:
        options["from_run"] = str(Path(from_card.run_dir).resolve())
    options["eval_date_shift"] = parse_shifts(options["eval_date_shift"])
    if options["head_lr"] is None and options["mode"] == "lora":
        options["head_lr"] = finetune_lr(training_spec)
    return options, spec, from_card


def finetune_lr(spec: ModelSpec) -> float:
    """The model's fine-tuning learning rate (its paper setting, else the engine's default)."""
    return model_training_defaults(spec, "finetune").get("lr", TrainConfig().lr)


def _on_pretrained(model: str, from_card: ModelCard) -> str:
    """--model with --from RUN of another model: a base classifier on the run's encoder (`ENCODER+BASE`,
    models/stacked.py), or an error for another pre-trainable model."""
    encoder, base = split_name(model) or (from_card.model_name, model)
    if encoder != from_card.model_name:          # a saved config naming another encoder
        wanted = encoder
    elif registry.get(base).pretext is not None:
        wanted = base
    else:
        return stacked_name(encoder, base)
    raise CheckpointError(f"{from_card.run_dir} holds a {from_card.model_name!r} model, not {wanted!r}: "
                          f"give a run of {wanted}, or leave out --model")


def parse_shifts(value) -> list[int]:
    """[0, 1, 2] or "0,1,2" -> [0, 1, 2] (days)."""
    if value is None or value == "":
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        return [int(str(v).strip()) for v in items if str(v).strip()]
    except ValueError:
        raise ConfigError(f"--eval-date-shift {value!r}: give whole days separated by commas, e.g. 0,1,2,3,5") from None


def _check_options(options: Mapping[str, Any], spec: ModelSpec, from_card: ModelCard | None) -> None:
    """What the option schemas cannot see alone: options that contradict each other or the model."""
    mode = options["mode"]
    if mode != "full" and from_card is None:
        raise ConfigError(f"--mode {mode} adapts a pre-trained encoder: give --from RUN (or use --mode full)")
    if options["pooling"] is not None and "pooling" not in spec.defaults:
        raise ConfigError(f"model {spec.name} has no pooling choice: leave out --pooling")
    if spec.direct_fit is not None and (from_card is not None or mode != "full"):
        raise ConfigError(f"model {spec.name} is not trained by gradient descent: --from and --mode do not apply to it")


def _check_single_process(spec: ModelSpec, classifier: nn.Module) -> None:
    """A forest, or a model with its own loss (called outside DDP's forward, so its gradients would
    not be synchronised), trains in one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and (spec.direct_fit is not None or hasattr(classifier, "training_loss")):
        raise ConfigError(f"model {spec.name} trains in one process only: run it without torchrun")


def warn_scarce_classes(prepared: Prepared) -> None:
    """Name the classes with fewer than MIN_CLASS_SAMPLES labelled training samples."""
    train = dict(prepared.ds.attrs.get("class_counts", {}).get("train", {}))
    scarce = [f"{name} ({train.get(name, 0)})" for name in prepared.class_names if train.get(name, 0) < MIN_CLASS_SAMPLES]
    if scarce:
        log(f"warning: {len(scarce)} class(es) with fewer than {MIN_CLASS_SAMPLES} training samples: {', '.join(scarce)}; "
            "their accuracy will be unreliable: label more samples of them, or merge them into a related class")


def _check_labelled(prepared: Prepared) -> None:
    if not prepared.class_names:
        raise DataContentError(f"{prepared.path} has no classes (an unlabelled dataset): fine-tuning needs labels; "
                               f"prepare the data with --labels (an unlabelled one serves sits pretrain)")
    counts = prepared.ds.attrs.get("class_counts", {})
    for split in ("train", "test"):
        present = [name for name, n in dict(counts.get(split, {})).items() if n and name in prepared.class_names]
        if len(present) == 1:
            log(f"warning: the {split} split of {prepared.path} holds one class only ({present[0]}): "
                + ("the classifier cannot learn to tell classes apart" if split == "train" else
                   "its accuracy will say nothing about telling classes apart"))


def _classifier_info(prepared: Prepared, from_card: ModelCard | None, fed: tuple[str, ...]) -> DataInfo:
    """The dataset's classes; band statistics and reference date from the pre-trained run if any
    (its encoder was trained with them, and they are part of its weights). Other sensors: those
    fed, and all those of the pre-trained run (its encoder holds weights for each). Clouds kept or
    not: as in the fine-tuning data, which the final weights were fitted to and inputs must match."""
    data = prepared.info()
    base = from_card.info if from_card is not None else data
    fed_attrs = {m: a for m, a in data.modalities.items() if m in fed}
    return DataInfo(list(base.band_names), list(base.band_mean), list(base.band_std), class_names=data.class_names,
                    class_colors=data.class_colors, reference_date=base.reference_date, class_codes=data.class_codes,
                    train_period=data.train_period,
                    modalities={**fed_attrs, **(base.modalities if from_card is not None else {})},
                    keep_cloudy=data.keep_cloudy)


def _fed(prepared: Prepared, spec: ModelSpec, chosen, from_card: ModelCard | None) -> tuple[str, ...]:
    """The sensors fine-tuning feeds: those chosen (else all the model can use), and from a pre-trained
    run only those its encoder knows (a sensor it never saw has no weights to fine-tune)."""
    fed = fed_modalities(prepared, spec, chosen)
    if from_card is None:
        return fed
    unknown = [m for m in fed if m != S2 and m not in from_card.info.modalities]
    if unknown and chosen is not None:
        raise CheckpointError(f"{from_card.run_dir} was pre-trained without {', '.join(unknown)}: leave "
                              f"{', '.join(unknown)} out of --modalities, or pre-train with it")
    return tuple(m for m in fed if m not in unknown)


def _hparams(options: Mapping[str, Any], spec: ModelSpec, from_card: ModelCard | None) -> dict[str, Any]:
    if split_name(spec.name) and from_card is not None:   # --hparam options are the base model's
        return {"encoder": dict(from_card.hparams), "base": {**spec.defaults["base"], **options["hparams"]}}
    hparams = {**(from_card.hparams if from_card else {}), **options["hparams"]}
    if options["pooling"] is not None:
        hparams["pooling"] = options["pooling"]
    return hparams


def load_encoder(classifier: nn.Module, from_card: ModelCard) -> None:
    """Copy the encoder weights of the pre-trained run into `classifier.encoder`."""
    pretrained, _ = load_model(from_card.run_dir, model_name=from_card.model_name)
    if not hasattr(classifier, "encoder") or not hasattr(pretrained, "encoder"):
        raise ConfigError(f"model {from_card.model_name} has no separate encoder to fine-tune: train it with --model")
    try:
        classifier.encoder.load_state_dict(pretrained.encoder.state_dict())
    except RuntimeError as exc:
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc).splitlines()[0])
        raise CheckpointError(f"the encoder of {from_card.run_dir} does not fit the hyper-parameters asked for ({first}): "
                              f"leave out --hparam options that change its size") from None


def _fit_inducing_points(hparams: dict[str, Any], spec: ModelSpec, num_train: int) -> dict[str, Any]:
    """An SVGP's default number of inducing points (the mTAN-SVGP paper's M = 200) capped at the
    training set's size: more inducing points than samples has nothing to summarise. A value the user
    (or a pre-trained card) gave is kept, and refused later if too large."""
    default = spec.defaults.get("inducing")
    if default is None or "inducing" in hparams or num_train >= default:
        return hparams
    log(f"{spec.name}: {num_train} inducing points (the default {default} is more than the {num_train} training samples)")
    return {**hparams, "inducing": num_train}


def _prepare_mode(classifier: nn.Module, options: Mapping[str, Any]) -> tuple[nn.Module, list[ParamGroup]]:
    """-> (the module to train, its trainable parameter groups with their lr) for the fine-tuning mode:
    the encoder's part at `lr` (None), the head at `head_lr`."""
    mode, head_lr = options["mode"], options["head_lr"]
    head = [p for name, p in classifier.named_parameters() if not name.startswith("encoder.")]
    if mode == "full":
        if head_lr is None:
            return classifier, [(list(classifier.parameters()), None)]
        encoder = [p for name, p in classifier.named_parameters() if name.startswith("encoder.")]
        return classifier, [(encoder, None), (head, head_lr)]
    if mode == "frozen":
        return FrozenEncoder(classifier), [(head, head_lr)]
    adapters = apply_lora(classifier.encoder, parse_targets(str(options["lora_targets"])), int(options["lora_rank"]),
                          float(options["lora_alpha"]), float(options["lora_dropout"]))
    return classifier, [(adapters, None), (head, head_lr)]


def class_weights(prepared: Prepared, how: str) -> Tensor | None:
    """Per-class loss weights (K,): "balanced" = n / (K * n_k) over the train split (scikit-learn's
    `class_weight="balanced"`); a class absent from the train split gets 0."""
    if how == "none":
        return None
    train_counts = dict(prepared.ds.attrs.get("class_counts", {}).get("train", {}))
    counts = np.array([train_counts.get(name, 0) for name in prepared.class_names], dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def hold_out_groups(dataset: SeriesDataset, prepared: Prepared, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split a dataset at random into (train, validation) by whole groups (parcels), `fraction` of
    the groups (at least one) in validation, so that no parcel is on both sides."""
    groups = prepared.ds["group"].values[dataset.indices]
    unique = np.unique(groups)
    if not 0 < fraction < 1 or unique.size < 2:
        raise DataContentError("no validation samples: give the dataset a val split, or set val_fraction in (0, 1) "
                               "with at least 2 training parcels")
    chosen = np.random.default_rng(seed).permutation(unique)[:max(1, int(round(fraction * unique.size)))]
    in_val = np.isin(groups, chosen)
    return Subset(dataset, np.flatnonzero(~in_val).tolist()), Subset(dataset, np.flatnonzero(in_val).tolist())


def report_split(prepared: Prepared, spec: ModelSpec, warn: bool = True,
                 modalities: tuple[str, ...] | None = None) -> tuple[str, SeriesDataset]:
    """The labelled test split, else the val split (with a warning); refused when both are empty."""
    for split in ("test", "val"):
        dataset = series_dataset(prepared, spec, (split,), labeled_only=True, modalities=modalities)
        if len(dataset):
            if split == "val" and warn:
                log(f"{prepared.path} has no labelled test sample: reporting on the val split, which also chose "
                    f"the best epoch (an optimistic figure)")
            return split, dataset
    raise DataContentError(f"{prepared.path} has no labelled test or val sample: nothing to report on; "
                           f"prepare it with a test split")


def evaluate(model: nn.Module, prepared: Prepared, spec: ModelSpec, class_names: list[str], *,
             date_shifts: list[int] | tuple[int, ...] = (), device: torch.device | str = "cpu", batch_size: int = 256,
             modalities: tuple[str, ...] | None = None) -> dict:
    """The report of `model` on the test split (val if none), with the OA per date shift if asked;
    fed the sensors `modalities` (None: all the model can use)."""
    split, dataset = report_split(prepared, spec, modalities=modalities)
    device = torch.device(device)
    model = model.to(device)
    if getattr(model, "multilabel", False):   # tile classification: classes present in each sample
        report = multilabel_report(*predict_multilabel(model, dataset, collate, device=device, batch_size=batch_size),
                                   class_names)
        report.update(split=split, dataset=str(prepared.path), model=spec.name)
        return report
    y_true, y_pred = predict_labels(model, dataset, collate, device=device, batch_size=batch_size)
    report = classification_report(y_true, y_pred, class_names)
    report.update(split=split, dataset=str(prepared.path), model=spec.name)
    if date_shifts:
        report["date_shift"] = {
            str(delta): classification_report(*predict_labels(model, dataset, collate, device=device, batch_size=batch_size,
                                                              date_shift=delta), class_names)["oa"]
            for delta in date_shifts}
        log("OA with dates shifted: " + ", ".join(f"{d:+d} d {oa:.4f}" for d, oa in
                                                  zip(date_shifts, report["date_shift"].values())))
    return report


def evaluate_run(run: str | Path, data: str | Path | None, date_shifts=(), *, out: str | Path | None = None,
                 device: str = "auto", batch_size: int = 256, overwrite: bool = False) -> dict:
    """Score an existing classifier run on the test split (val if none) of `data`.

    Writes the report files into `out` (a new folder) when given; returns the report.
    """
    if data is None:
        raise ConfigError("give the labelled prepared dataset to evaluate on (DATA or --data)")
    out_dir = check_output(Path(out), overwrite) if out is not None else None
    model, card = load_model(Path(run), resolve_device(device))
    if card.info.num_classes == 0:
        raise CheckpointError(f"{card.run_dir} is a pre-training run (no classes): fine-tune it first "
                              f"(sits finetune --from {card.run_dir}) and evaluate the fine-tuned run")
    prepared = open_prepared(data)
    spec = registry.get(card.model_name)
    check_input_kind(prepared, spec)
    check_bands(card, prepared.band_names)
    check_modalities(card, prepared.modalities)
    check_classes(card, prepared.class_names)
    report = evaluate(model, prepared, spec, list(card.info.class_names), date_shifts=parse_shifts(date_shifts),
                      device=_device_of(model, device), batch_size=batch_size,
                      modalities=card.extra.get("modalities"))
    report["run"] = str(card.run_dir)
    if out_dir is not None and is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        write_report(out_dir, report, list(card.info.class_names))
    return report


def _device_of(model: nn.Module, fallback: str) -> torch.device:
    """Where the model's weights are (a model without parameters, such as a forest, on `fallback`)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else resolve_device(fallback)
