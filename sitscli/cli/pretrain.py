"""`sits pretrain DATA --model M --out RUN`, and what the training commands share.

The helpers here (`key_values`, `finish_run`) are also used by `sits finetune` and `sits probe`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
import yaml

from sitscli.cli.app import app
from sitscli.core.errors import ConfigError
from sitscli.core.progress import log
from sitscli.engine.signals import INTERRUPTED_EXIT_CODE


def key_values(items: list[str] | None, option: str) -> dict | None:
    """["hidden=32", "unet_widths=[32,32,64,64]"] -> {"hidden": 32, ...}; values read as YAML scalars
    or lists, so numbers, booleans and lists get their types. None when no item was given."""
    if not items:
        return None
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} {item!r}: write key=value, e.g. {option} hidden=128")
        try:
            parsed[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"{option} {item!r}: the value is not a number, word or [list]") from None
    return parsed


def finish_run(result, command: str) -> None:
    """After training: on a graceful stop, say how to resume and exit with INTERRUPTED_EXIT_CODE."""
    if result.interrupted:
        log(f"training stopped before the end; continue it with: sits {command} --resume {result.run_dir}")
        # SystemExit, not typer.Exit: click run with standalone_mode=False (app.main) returns the
        # code of a typer.Exit instead of exiting with it.
        raise SystemExit(INTERRUPTED_EXIT_CODE)


@app.command("pretrain")
def pretrain_command(
    data: Optional[Path] = typer.Argument(None, help="Prepared dataset (NAME.sits) to pre-train on; labels are not used."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model to pre-train (default sitsbert); see sits info --models."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to write (model.safetensors, model.yaml, curves)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (default: the model's paper setting)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples per step and process."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default) | cpu | cuda | cuda:N | mps."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed: the same seed repeats a CPU run exactly."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="DataLoader worker processes (default 0)."),
    hparam: Optional[list[str]] = typer.Option(None, "--hparam", help="Model hyper-parameter key=value (repeatable)."),
    pretext: Optional[list[str]] = typer.Option(None, "--pretext", help="Pretext-task option key=value (repeatable)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the interrupted run in this directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="YAML file of options; flags given here win."),
) -> None:
    """Self-supervised pre-training of an encoder with its model's pretext task."""
    from sitscli.workflows.pretrain import pretrain

    result = pretrain(out=out, config_file=config_file, resume=resume, overwrite=overwrite,
                      data=str(data) if data else None, model=model, epochs=epochs, batch_size=batch_size, lr=lr,
                      device=device, seed=seed, num_workers=num_workers,
                      hparams=key_values(hparam, "--hparam"), pretext=key_values(pretext, "--pretext"))
    finish_run(result, "pretrain")
    typer.echo(f"pre-trained run: {result.run_dir} (best epoch {result.fit.best_epoch}, "
               f"monitored value {result.fit.best_metric:.4g}; curves in {result.run_dir / 'curves.png'})")
