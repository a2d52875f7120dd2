"""Exclusive output locks: a second process writing the same output is refused at once, naming the holder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sitscli.core.errors import ConfigError, OutputLockedError
from sitscli.core.io import check_output, holder_file, lock_file, output_locks
from _cli import sits

ROOT = Path(__file__).resolve().parents[1]

# A process that locks OUTPUT as a sits command does, writes a file into it, says "locked" and waits.
HOLDER = """
import sys, time
from pathlib import Path
from sitscli.core.io import check_output, output_locks
out = Path(sys.argv[1])
with output_locks():
    check_output(out, overwrite=True)
    out.mkdir(exist_ok=True)
    (out / "from-holder.txt").write_text("first run")
    print("locked", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process holding the lock of tmp_path/run -> (process, output path)."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "locked"
    yield proc, out
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_naming_the_holder(holder):
    proc, out = holder
    with output_locks(), pytest.raises(OutputLockedError) as caught:
        check_output(out, overwrite=True)
    message = str(caught.value)
    assert f"pid {proc.pid}" in message and "host " in message and "started " in message
    assert "\n" not in message
    assert (out / "from-holder.txt").read_text() == "first run"


def test_pretrain_on_a_locked_run_directory_fails_at_once_and_leaves_it_intact(holder, monkeypatch, capsys):
    proc, out = holder
    code, _, err = sits(monkeypatch, capsys, "pretrain", "no-such-data.sits", "--out", out, "--overwrite")
    assert code == OutputLockedError.exit_code == 4
    assert err.count("\n") == 1 and f"pid {proc.pid}" in err
    assert sorted(p.name for p in out.iterdir()) == ["from-holder.txt"]


def test_predict_map_refused_while_another_run_writes_the_same_map(holder, monkeypatch, capsys, tmp_path):
    proc, out = holder           # the lock of "run" stands for a map being written under that name
    code, _, err = sits(monkeypatch, capsys, "predict-map", tmp_path, "--model", tmp_path, "--out", out)
    assert code == 4 and f"pid {proc.pid}" in err


def test_the_lock_of_a_killed_run_is_taken_over(holder):
    proc, out = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lock_file(out).exists()                          # what a kill -9 leaves
    with output_locks():
        check_output(out, overwrite=True)
        assert json.loads(holder_file(out).read_text())["pid"] == os.getpid()
    assert not lock_file(out).exists() and not holder_file(out).exists()


def test_locks_and_folders_made_for_an_unwritten_output_are_removed(tmp_path):
    out = tmp_path / "new" / "deeper" / "map.tif"
    with output_locks():
        check_output(out, overwrite=False)
        assert out.parent.is_dir() and lock_file(out).exists()
    assert list(tmp_path.iterdir()) == []


def test_an_output_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with output_locks(), pytest.raises(ConfigError, match="notes.txt is a file, not a folder"):
        check_output(tmp_path / "notes.txt" / "run", overwrite=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
