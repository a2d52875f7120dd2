"""`sits probe DATA --from RUN --out RUN`: linear probing of a pre-trained encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sitscli.cli.app import app
from sitscli.cli.finetune import show, training_flags
from sitscli.cli.common import CONFIG_OPTION, finish_run


@app.command("probe")
def probe_command(
    data: Optional[Path] = typer.Argument(None, help="Labelled prepared dataset (NAME.sits): train, val and test splits."),
    from_run: Optional[Path] = typer.Option(None, "--from", help="Pre-trained run whose frozen encoder is probed."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to write (model, report, curves)."),
    class_weights: Optional[str] = typer.Option(None, "--class-weights", help="none (default) | balanced (inverse class frequency)."),
    eval_date_shift: Optional[str] = typer.Option(None, "--eval-date-shift", help="Also score with dates moved by these days, e.g. 0,1,2,3,5."),
    modalities: Optional[str] = typer.Option(None, "--modalities", help="Sensors to feed, e.g. s2,s1,vhr (default: every sensor of the data the model uses)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples per step and process."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default 1e-4, ALISE's probing)."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Stop after this many epochs without a better val OA."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default) | cpu | cuda | cuda:N | mps."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed: the same seed repeats a CPU run exactly."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="DataLoader worker processes (default 0)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the interrupted run in this directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    config_file: Optional[Path] = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Linear probing: a frozen pre-trained encoder and one linear layer (ALISE's protocol), with a test report."""
    from sitscli.workflows.probe import probe

    result = probe(out=out, config_file=config_file, resume=resume, overwrite=overwrite,
                   data=str(data) if data else None, from_run=str(from_run) if from_run else None,
                   class_weights=class_weights, eval_date_shift=eval_date_shift, modalities=modalities,
                   **training_flags(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, device=device,
                                    seed=seed, num_workers=num_workers, hparam=None))
    finish_run(result, "probe")
    show(result, as_json)
    if not as_json and result.report is not None:
        typer.echo(f"run: {result.run_dir} (report: metrics.json, per_class.csv, confusion.png)")
