"""`sits pretrain DATA --model M --out RUN`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sitscli.cli.app import app
from sitscli.cli.common import CONFIG_OPTION, finish_run, key_values


@app.command("pretrain")
def pretrain_command(
    data: Optional[Path] = typer.Argument(None, help="Prepared dataset (NAME.sits) to pre-train on; labels are not used."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model to pre-train: sitsbert (default), alise, "
                                        "omnisat, bimodal-bert or resmlp-contrastive, the models with a pretext task."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to write (model.safetensors, model.yaml, curves)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (default: the model's paper setting)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples per step and process."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Stop after this many epochs without progress of the pretext validation loss."),
    min_delta: Optional[float] = typer.Option(None, "--min-delta", help="Progress = the pretext validation loss falls by more than this share (0.01 = 1 %) "
                                              "since the last progress (default 0: any fall)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default) | cpu | cuda | cuda:N | mps."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed: the same seed repeats a CPU run exactly."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="DataLoader worker processes (default 0)."),
    hparam: Optional[list[str]] = typer.Option(None, "--hparam", help="Model hyper-parameter key=value (repeatable); `sits models M` lists them with defaults and sources."),
    pretext: Optional[list[str]] = typer.Option(None, "--pretext", help="Pretext-task option key=value (repeatable)."),
    modalities: Optional[str] = typer.Option(None, "--modalities", help="Sensors to feed, e.g. s2,s1,vhr (default: every sensor of the data the model uses)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the interrupted run in this directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    config_file: Optional[Path] = CONFIG_OPTION,
) -> None:
    """Self-supervised pre-training of an encoder with its model's pretext task."""
    from sitscli.workflows.pretrain import pretrain

    result = pretrain(out=out, config_file=config_file, resume=resume, overwrite=overwrite,
                      data=str(data) if data else None, model=model, epochs=epochs, batch_size=batch_size, lr=lr,
                      patience=patience, min_delta=min_delta,
                      device=device, seed=seed, num_workers=num_workers, modalities=modalities,
                      hparams=key_values(hparam, "--hparam"), pretext=key_values(pretext, "--pretext"))
    finish_run(result, "pretrain")
    typer.echo(f"pre-trained run: {result.run_dir} (best epoch {result.fit.best_epoch}, "
               f"monitored value {result.fit.best_metric:.4g}; curves in {result.run_dir / 'curves.png'})")
