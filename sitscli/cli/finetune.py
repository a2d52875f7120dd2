"""`sits finetune DATA --out RUN [--from RUN] [--model M] [--mode full|frozen|lora]`, and
`sits finetune --evaluate RUN --data DATA [--eval-date-shift 0,1,2]` to score an existing run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from sitscli.cli.app import app
from sitscli.cli.common import CONFIG_OPTION, finish_run, key_values
from sitscli.core.errors import ConfigError


def print_report(report: dict) -> None:
    """The test report on stdout: a rich table on a terminal, plain aligned text otherwise."""
    from sitscli.engine.metrics import report_summary

    rows = [(c["name"], f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"]))
            for c in report["per_class"]]
    header = ("class", "precision", "recall", "F1", "support")
    summary = f"{report['split']} split, {report['samples']:,} samples: {report_summary(report)}"
    shifts = report.get("date_shift") or {}
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(header[0])
        for name in header[1:]:
            table.add_column(name, justify="right")
        for row in rows:
            table.add_row(*row)
        console = Console()
        console.print(summary, highlight=False)
        console.print(table)
        if shifts:
            shift_table = Table("date shift (days)", "OA")
            for delta, oa in shifts.items():
                shift_table.add_row(f"{int(delta):+d}", f"{oa:.4f}")
            console.print(shift_table)
        return
    width = max([len(header[0])] + [len(r[0]) for r in rows])
    typer.echo(summary)
    typer.echo(f"{header[0]:<{width}}  " + "  ".join(f"{h:>9}" for h in header[1:]))
    for row in rows:
        typer.echo(f"{row[0]:<{width}}  " + "  ".join(f"{v:>9}" for v in row[1:]))
    for delta, oa in shifts.items():
        typer.echo(f"date shift {int(delta):+d} days: OA {oa:.4f}")


def show(result_or_report, as_json: bool) -> None:
    """Print a report, or a training result's (none on the other ranks of a torchrun job)."""
    report = result_or_report if isinstance(result_or_report, dict) else result_or_report.report
    if report is None:
        return
    if as_json:
        typer.echo(json.dumps(report, indent=1))
    else:
        print_report(report)


def training_flags(*, epochs, batch_size, lr, patience, device, seed, num_workers, hparam) -> dict:
    """The engine and model options every training command shares (None = not given)."""
    return {"epochs": epochs, "batch_size": batch_size, "lr": lr, "patience": patience, "device": device,
            "seed": seed, "num_workers": num_workers, "hparams": key_values(hparam, "--hparam")}


@app.command("finetune")
def finetune_command(
    data: Optional[Path] = typer.Argument(None, help="Labelled prepared dataset (NAME.sits): train, val and test splits."),
    data_option: Optional[Path] = typer.Option(None, "--data", help="The dataset, as an option (same as DATA)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to write (model, report, curves)."),
    from_run: Optional[Path] = typer.Option(None, "--from", help="Pre-trained run whose encoder is fine-tuned."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model (default: the --from run's; required without --from). With --from, a base model (lstm, inceptiontime, transformer) trains on the run's per-date representation."),
    mode: Optional[str] = typer.Option(None, "--mode", help="full (default) | frozen (head only) | lora (adapters + head)."),
    pooling: Optional[str] = typer.Option(None, "--pooling", help="Sequence pooling of the head: cls | mean | max."),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", help="LoRA rank r (default 16)."),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="LoRA scale alpha (default 24)."),
    lora_dropout: Optional[float] = typer.Option(None, "--lora-dropout", help="Dropout on the adapters' input (default 0.01)."),
    lora_targets: Optional[str] = typer.Option(None, "--lora-targets", help="Layers to adapt: q,v (default), qkv, qkv,ffn or any of q,k,v,fc1,fc2."),
    head_lr: Optional[float] = typer.Option(None, "--head-lr", help="Learning rate of the classification head (default: --lr; with --mode lora, the model's fine-tuning rate, while --lr sets the adapters')."),
    class_weights: Optional[str] = typer.Option(None, "--class-weights", help="none (default) | balanced (inverse class frequency)."),
    eval_date_shift: Optional[str] = typer.Option(None, "--eval-date-shift", help="Also score with dates moved by these days, e.g. 0,1,2,3,5."),
    modalities: Optional[str] = typer.Option(None, "--modalities", help="Sensors to feed, e.g. s2,s1,vhr (default: every sensor of the data the model uses)."),
    evaluate: Optional[Path] = typer.Option(None, "--evaluate", help="Only score this existing classifier run on DATA's test split."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (default: the model's paper setting)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples per step and process."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Stop after this many epochs without a better val OA."),
    min_total_steps: Optional[int] = typer.Option(None, "--min-total-steps", help="At least this many optimizer steps: more epochs on few labels (default: the model's, e.g. mtan-svgp 3200; --epochs alone turns it off)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (default) | cpu | cuda | cuda:N | mps."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed: the same seed repeats a CPU run exactly."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="DataLoader worker processes (default 0)."),
    hparam: Optional[list[str]] = typer.Option(None, "--hparam", help="Model hyper-parameter key=value (repeatable); `sits models M` lists them with defaults and sources."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the interrupted run in this directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory (or --evaluate report folder)."),
    config_file: Optional[Path] = CONFIG_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Train a classifier (from a pre-trained run or from scratch) and report on the test split."""
    dataset = _one_dataset(data, data_option)
    if evaluate is not None:
        from sitscli.workflows.finetune import evaluate_run

        if from_run is not None or mode is not None or resume is not None:
            raise ConfigError("--evaluate scores an existing run: leave out --from, --mode and --resume")
        report = evaluate_run(evaluate, dataset, eval_date_shift or (), out=out, device=device or "auto",
                              batch_size=batch_size or 256, overwrite=overwrite)
        show(report, as_json)
        return
    from sitscli.workflows.finetune import finetune

    result = finetune(
        out=out, config_file=config_file, resume=resume, overwrite=overwrite,
        data=dataset, model=model, from_run=str(from_run) if from_run else None, mode=mode, pooling=pooling,
        lora_rank=lora_rank, lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_targets=lora_targets,
        head_lr=head_lr, class_weights=class_weights, eval_date_shift=eval_date_shift, modalities=modalities,
        min_total_steps=min_total_steps,
        **training_flags(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, device=device, seed=seed,
                         num_workers=num_workers, hparam=hparam))
    finish_run(result, "finetune")
    show(result, as_json)
    if not as_json and result.report is not None:
        typer.echo(f"run: {result.run_dir} (report: metrics.json, per_class.csv, confusion.png)")


def _one_dataset(data: Path | None, data_option: Path | None) -> str | None:
    if data is not None and data_option is not None and data != data_option:
        raise ConfigError(f"two datasets given ({data} and --data {data_option}): give one")
    chosen = data or data_option
    return str(chosen) if chosen is not None else None
