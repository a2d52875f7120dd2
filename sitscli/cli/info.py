"""`sits info PATH [--json]`: describe a prepared dataset, an L2A folder or stack, or a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from sitscli.cli.app import app
from sitscli.core.progress import is_terminal

# A section: (title, column headers or None for key/value rows, rows of cells).
Section = tuple[str, list[str] | None, list[list[str]]]
MAX_LIST = 12  # band or class names shown inline before "..."


@app.command("info")
def info_command(
    path: Path = typer.Argument(..., help="A prepared dataset (NAME.sits), an L2A folder or stack, or a run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON on stdout."),
) -> None:
    """Describe a dataset, a Sentinel-2 L2A folder (dates and cloud fractions) or a trained run."""
    from sitscli.workflows.info import info

    found = info(path)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    sections = {"dataset": _dataset, "l2a": _l2a, "run": _run}[found["kind"]](found)
    if is_terminal():
        _print_rich(sections)
    else:
        typer.echo(_plain(sections))


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LIST])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > MAX_LIST else shown


def _dataset(d: dict) -> list[Section]:
    per = d["dates_per_sample"]
    mode = d["mode"] + (f", {d['patch_size']} x {d['patch_size']} px patches" if d["patch_size"] else "")
    about = [["path", d["path"]], ["source", d["source"]], ["sensor", d["sensor"]], ["mode", mode],
             ["samples", str(d["samples"])], ["time steps", str(d["time_steps"])],
             ["date range", " to ".join(d["date_range"]) if d["date_range"] else "-"],
             ["clear dates per sample", f"min {per['min']}, median {per['median']:g}, max {per['max']}"],
             ["bands", _names(d["bands"])], ["CRS", d.get("crs_name") or ("per tile" if d.get("tiles") else "-")],
             ["fingerprint", d["fingerprint"]]]
    if d.get("tiles"):
        about.insert(-2, ["tiles", f"{len(d['tiles'])}: " + ", ".join(f"{t['id']} ({t['crs']}, {t['samples']} samples)"
                                                                    for t in d["tiles"])])
    splits = list(d["class_counts"])
    names = [c["name"] for c in d["classes"]] + ["unlabeled"]
    counts = [[name] + [str(d["class_counts"][s].get(name, 0)) for s in splits] for name in names
              if any(d["class_counts"][s].get(name) for s in splits)]
    counts.append(["total"] + [str(d["splits"].get(s, 0)) for s in splits])
    stats = d["band_stats"]
    bands = [[b, f"{stats['mean'][b]:.4f}", f"{stats['std'][b]:.4f}"] for b in d["bands"]]
    sections = [("dataset", None, about), ("samples per class and split", ["class", *splits], counts),
                (f"band statistics ({stats['from_split']} split, reflectance)", ["band", "mean", "std"], bands)]
    if d.get("modalities"):
        sections.append(_sensors(d["modalities"]))
    return sections


def _sensors(modalities: dict) -> Section:
    """One row per sensor: dates, bands, resolution, clear fraction."""
    rows = []
    for name, m in modalities.items():
        when = " to ".join(m["date_range"]) if m.get("date_range") else ("-" if name != "s2" else "")
        note = ("kept cloudy" + (f" ({m['cloud_source']})" if m.get("cloud_source") else "")) if m.get("keep_cloudy") else ""
        footprint = " x ".join(str(v) for v in m.get("footprint", [])) or "1"
        rows.append([name, str(m["dates"]) + (f" ({when})" if when else ""), _names(m["bands"]), f"{m['resolution']:g} m",
                     footprint if name != "s2" else "", f"{100 * m['clear_fraction']:.1f}%"
                     if m.get("clear_fraction") is not None else "-", note])
    return ("sensors", ["sensor", "dates", "bands", "resolution", "px per sample", "clear", "note"], rows)


def _l2a(d: dict) -> list[Section]:
    dates = d["dates"]
    about = [["path", d["path"]], ["layout", d["layout"]], ["tile", d["tile"] or "-"], ["CRS", d["crs"] or "-"],
             ["size", f"{d['width']} x {d['height']} px at {d['resolution']:g} m"],
             ["bounds", ", ".join(f"{b:.1f}" for b in d["bounds"])], ["bands", _names(d["bands"])],
             ["dates", f"{d['n_dates']}, {dates[0]['date']} to {dates[-1]['date']}" if dates else "0"],
             ["mean cloud fraction", f"{100 * d['mean_cloud_fraction']:.1f}%" if dates else "-"]]
    rows = [[t["date"], f"{100 * t['cloud_fraction']:.1f}", ", ".join(t.get("products", []))] for t in dates]
    return [("L2A time series", None, about), ("dates (cloud or no-data %)", ["date", "cloudy %", "product"], rows)]


WEIGHTS_STATUS = {"verified": "present, checksum verified", "missing": "MISSING: the run is incomplete",
                  "changed": "CHANGED: they do not match the checksum in model.yaml (copy the run again)"}


def _run(d: dict) -> list[Section]:
    if d["status"] == "interrupted":
        return [("run (interrupted)", None, [["path", d["path"]], ["model", str(d["model"])],
                                            ["progress", d["progress"]], ["continue with", d["continue"]]])]
    about = [["path", d["path"]], ["status", "finished"], ["model", d["model"]], ["task", d["task"]],
             ["bands", _names(d["bands"])], ["classes", str(len(d["classes"]))],
             ["dataset fingerprint", d["dataset_fingerprint"] or "-"], ["sitscli version", d["sitscli_version"]],
             ["weights", WEIGHTS_STATUS[d["weights"]]]]
    if "reference_date" in d:
        about.append(["reference date", d["reference_date"]])
    sections = [("run", None, about)]
    if d["classes"]:
        if "class_codes" in d:
            rows = [[str(i), str(c), n] for i, (c, n) in enumerate(zip(d["class_codes"], d["classes"]))]
            sections.append(("classes", ["id", "code (map value)", "name"], rows))
        else:
            sections.append(("classes", ["id", "name"], [[str(i), n] for i, n in enumerate(d["classes"])]))
    sections.append(("hyper-parameters", None, [[k, json.dumps(v)] for k, v in d["hparams"].items()]))
    if d.get("metrics"):
        sections.append(("metrics", None, [[k, f"{v:.4g}"] for k, v in d["metrics"].items()]))
    return sections


def _plain(sections: list[Section]) -> str:
    """Sections as aligned text, for logs and pipes."""
    lines = []
    for title, header, rows in sections:
        lines.append(f"{title}:")
        table = ([header] if header else []) + rows
        if not table:
            continue
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        sep = ": " if header is None else "  "
        for row in table:
            lines.append("  " + sep.join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + sep + row[-1])
    return "\n".join(lines)


def _print_rich(sections: list[Section]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for title, header, rows in sections:
        table = Table(title=title, title_justify="left", show_header=header is not None, box=None)
        for i, name in enumerate(header or [""] * (len(rows[0]) if rows else 2)):
            table.add_column(name, style="bold" if header is None and i == 0 else None,
                             justify="right" if header and i > 0 and name not in ("product", "name") else "left")
        for row in rows:
            table.add_row(*row)
        console.print(table)
