"""Run the `sits` console script in-process, as a user's shell would."""

from __future__ import annotations

import sys

from sitscli.cli.app import main


def sits(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run `sits ARGS` -> (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["sits", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err
