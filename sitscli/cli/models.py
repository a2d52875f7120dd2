"""`sits models [NAME] [--json]`."""

from __future__ import annotations

import json
from typing import Optional

import typer

from sitscli.cli.app import app


@app.command("models")
def models_command(
    name: Optional[str] = typer.Argument(None, help="A model: show its hyper-parameters (defaults, allowed values, sources)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON on stdout."),
) -> None:
    """The models --model takes; with NAME, its hyper-parameters (--hparam) and paper training settings."""
    from sitscli.workflows.models import describe_model, list_models

    found = describe_model(name) if name else list_models()
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    if name is None:
        width = max(len(m["name"]) for m in found)
        for m in found:
            kind = m["input"] + (f", pretext {m['pretext']}" if m["pretext"] else "")
            typer.echo(f"{m['name']:<{width}}  {m['description']} ({kind})")
        return
    typer.echo(f"{found['name']}: {found['description']}")
    typer.echo(f"input: {found['input']} samples" + (f"; pre-training pretext: {found['pretext']}" if found["pretext"] else ""))
    typer.echo("hyper-parameters (--hparam KEY=VALUE):")
    rows = [(h["name"], json.dumps(h["default"]), h["allowed"], h["source"] or "-") for h in found["hparams"]]
    widths = [max([len(r[i]) for r in rows] + [len(title)]) for i, title in enumerate(("name", "default", "allowed"))]
    for row in [("name", "default", "allowed", "source"), *rows]:
        typer.echo("  " + "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    for stage, values in found["training"].items():
        typer.echo(f"paper settings, {stage}: " + ", ".join(f"{k} {json.dumps(v)}" for k, v in values.items()))
