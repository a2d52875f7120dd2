"""The `sits` command: one thin module per sub-command over the workflows.

Errors a user can cause arrive as `SitsError` and are printed on one line (exit code from the
error class); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys

import typer

from sitscli import __version__
from sitscli.core import progress
from sitscli.core.errors import OS_ERROR_EXIT_CODE, SitsError, os_error_line
from sitscli.core.io import output_locks
from sitscli.engine.signals import StopRequested, stop_handlers

app = typer.Typer(
    name="sits",
    help="Satellite image time series: prepare Sentinel-2 data, pre-train, fine-tune, map land cover and change.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sits {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors and results: no progress or messages."),
) -> None:
    _state["debug"] = debug
    progress.set_quiet(quiet)


# Each module adds its command(s) to `app` on import; listed in pipeline order for --help.
COMMAND_MODULES: tuple[str, ...] = (
    "prepare", "pretrain", "finetune", "probe", "predict_map", "change_detect", "accuracy", "smooth", "uncertainty",
    "embed", "info", "models", "demo",
)


def _register() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"sitscli.cli.{name}")


def main() -> None:
    # The stop handlers come first, before the commands' imports and before anything is written:
    # from here on SIGTERM/SIGUSR1/SIGINT end the command cleanly (engine/signals.py).
    with stop_handlers():
        _register()
        try:
            # Every output a command checks is locked against other sits processes until it returns.
            with output_locks():
                code = app(standalone_mode=False)  # without standalone mode, click returns typer.Exit's code
            if isinstance(code, int) and code:
                sys.exit(code)
        except (StopRequested, SitsError, OSError, MemoryError) as exc:
            if _state["debug"]:
                raise
            line, code = _one_line(exc)
            typer.secho(line, fg=None if isinstance(exc, StopRequested) else typer.colors.RED, err=True)
            sys.exit(code)
        except KeyboardInterrupt:
            typer.secho("interrupted", err=True)
            sys.exit(130)
        except typer.Exit as exc:
            sys.exit(exc.exit_code)
        except typer.Abort:
            sys.exit(1)
        except typer.TyperException as exc:  # usage errors of Typer's own click (not the `click` package)
            exc.show()
            sys.exit(exc.exit_code)


def _one_line(exc: BaseException) -> tuple[str, int]:
    """The line printed for an error or a stop, and the exit code (see core/errors.py)."""
    if isinstance(exc, StopRequested):
        return exc.line(), exc.exit_code
    if isinstance(exc, SitsError):
        return f"error: {exc}", exc.exit_code
    if isinstance(exc, OSError):        # a full disk, a read-only folder...: the atomic writers cleaned up
        return f"error: {os_error_line(exc)}", OS_ERROR_EXIT_CODE
    return ("error: out of memory: use smaller sizes (--block, --batch-size, --patch-size) or a machine with "
            "more memory", 1)
