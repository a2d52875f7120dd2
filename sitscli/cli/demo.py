"""`sits demo --out DIR`: the whole pipeline on embedded synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from sitscli.cli.app import app


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo-output"), "--out", "-o", help="Folder for everything the demo makes."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic scene and of every training run."),
    device: str = typer.Option("auto", "--device", help="auto (default) | cpu | cuda | cuda:N | mps."),
    change: bool = typer.Option(True, "--change/--no-change", help="Also pre-train ALISE and map change year 1 -> 2."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Synthetic L2A data -> prepare -> pretrain -> finetune -> predict-map (-> change-detect), with a report."""
    from sitscli.workflows.demo import run_demo

    report = run_demo(out, seed=seed, device=device, overwrite=overwrite, change=change)
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
        return
    for key, value in report["classification"].items():
        typer.echo(f"{key}: {value}")
    typer.echo(f"map: {report['map']['outputs']['map']}")
    for method, result in report.get("change", {}).items():
        typer.echo(f"change ({method}): AUC {result.get('auc')}")
    typer.echo(f"report: {Path(out) / 'report.md'}")
