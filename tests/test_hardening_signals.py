"""Stop signals at any moment: during start-up, the final report, prepare; Ctrl-C; the SLURM script."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sitscli.core.io import holder_file
from sitscli.engine import trainer
from sitscli.engine.signals import INTERRUPTED_EXIT_CODE
from sitscli.workflows import finetune as finetune_workflow
from _cli import sits
from test_finetune import write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--hparam", "hidden=32", "--hparam", "layers=1", "--hparam", "heads=4", "--device", "cpu",
        "--batch-size", "32"]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory, toy_pixel_series):
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "toy", toy_pixel_series, n=60,
                             band_names=["B02", "B03", "B04", "B08"])


def _signal_on_call(monkeypatch, owner, name: str, signum=signal.SIGTERM) -> None:
    """Make `owner.name(...)` send `signum` to this process once, then do its work."""
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        monkeypatch.setattr(owner, name, original)
        os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


def test_sigterm_during_start_up_leaves_nothing_and_the_same_command_runs(tmp_path, monkeypatch, capsys, toy_data):
    run = tmp_path / "run"
    command = ["pretrain", toy_data, "--out", run, "--epochs", "1", *TINY]
    # the optimiser is made after the run directory and before the training loop: the window of the issue
    _signal_on_call(monkeypatch, trainer, "_make_optimizer")
    code, _, err = sits(monkeypatch, capsys, *command)
    assert code == INTERRUPTED_EXIT_CODE
    assert err.strip().splitlines()[-1] == "stopped by SIGTERM: nothing was kept; run the same command again"
    assert list(tmp_path.iterdir()) == []
    code, _, err = sits(monkeypatch, capsys, *command)
    assert code == 0, err
    assert (run / "model.yaml").is_file()


@pytest.mark.parametrize("how", ["--out", "--resume"])
def test_a_run_killed_before_its_first_save_is_started_again(how, tmp_path, monkeypatch, capsys, toy_data):
    run = tmp_path / "run"
    code, _, err = sits(monkeypatch, capsys, "pretrain", toy_data, "--out", run, "--epochs", "1", *TINY)
    assert code == 0, err
    for path in run.iterdir():                      # what a kill -9 right after the directory appeared leaves
        if path.name != "config.yaml":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    args = ["--out", run, toy_data, "--epochs", "1", *TINY] if how == "--out" else ["--resume", run]
    code, _, err = sits(monkeypatch, capsys, "pretrain", *args)
    assert code == 0, err
    assert "stopped before its first save" in err and (run / "model.yaml").is_file()


def test_sigterm_during_the_final_report_keeps_the_training_and_resume_writes_the_report(
        tmp_path, monkeypatch, capsys, toy_data):
    run = tmp_path / "ft"
    _signal_on_call(monkeypatch, finetune_workflow, "evaluate")
    code, _, err = sits(monkeypatch, capsys, "finetune", toy_data, "--model", "sitsbert", "--out", run,
                        "--epochs", "1", *TINY)
    assert code == INTERRUPTED_EXIT_CODE
    assert err.strip().splitlines()[-1] == (f"stopped by SIGTERM: the last saved state is kept; "
                                            f"continue with --resume {run}")
    assert not (run / "model.yaml").exists()
    code, out, err = sits(monkeypatch, capsys, "finetune", "--resume", run)
    assert code == 0, err
    assert (run / "model.yaml").is_file() and (run / "metrics.json").is_file() and "OA" in out


def _sitsbert_csv(path: Path, rows: int = 40, steps: int = 5) -> Path:
    rng = np.random.default_rng(0)
    values = rng.integers(100, 4000, (rows, 10 * steps))
    doys = np.tile(np.arange(1, steps + 1) * 30, (rows, 1))
    labels = rng.integers(0, 3, (rows, 1))
    np.savetxt(path, np.hstack([values, doys, labels]), fmt="%d", delimiter=",")
    return path


@pytest.fixture
def sigint_handled():
    """SIGINT at Python's default handler: a shell starts background jobs (`make test &`) with SIGINT
    ignored, which the CLI rightly keeps (engine/signals.py), and a Ctrl-C test would then see nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, INTERRUPTED_EXIT_CODE), (signal.SIGINT, 130)])
def test_a_signal_during_prepare_leaves_nothing_and_says_so_in_one_line(signum, code, tmp_path, monkeypatch, capsys,
                                                                       sigint_handled):
    from sitscli.data import prepared

    csv = _sitsbert_csv(tmp_path / "train.csv")
    _signal_on_call(monkeypatch, prepared.PreparedWriter, "append", signum)
    got, out, err = sits(monkeypatch, capsys, "prepare", "sitsbert-csv", csv, "--out", tmp_path / "d")
    assert got == code
    assert err.strip().splitlines()[-1] == (f"stopped by {signal.Signals(signum).name}: nothing was kept; "
                                            f"run the same command again")
    assert [p.name for p in tmp_path.iterdir()] == ["train.csv"]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < end, "the command ended before it took its lock"
        time.sleep(0.02)


def test_slurm_script_requeues_after_a_stop_at_start_up_and_the_requeued_job_finishes(tmp_path, toy_data):
    """examples/slurm/pretrain_one_node.sbatch with stand-ins for torchrun (runs the one process)
    and scontrol (records the requeue): the wall-time signal comes while the command starts up."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "torchrun").write_text('#!/bin/bash\nwhile [[ $1 != -m ]]; do shift; done\n'
                                      f'exec {sys.executable} "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path / "requeued"}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT), "SLURM_JOB_ID": "7",
           "SLURM_GPUS_ON_NODE": "1", "SLURM_CPUS_PER_TASK": "1"}
    run = tmp_path / "run"
    script = ["bash", str(ROOT / "examples" / "slurm" / "pretrain_one_node.sbatch"), str(toy_data), str(run),
              "--device", "cpu", "--epochs", "2", "--batch-size", "32", "--hparam", "hidden=32", "--hparam", "layers=1"]
    job = subprocess.Popen(script, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(holder_file(run), job)              # the command has started: its output is locked
    job.send_signal(signal.SIGUSR1)               # what `#SBATCH --signal=B:USR1@300` sends the batch shell
    log, _ = job.communicate(timeout=60)
    assert job.returncode == INTERRUPTED_EXIT_CODE, log
    assert (tmp_path / "requeued").read_text() == "requeue 7\n"
    assert "Traceback" not in log and not (run / "model.yaml").exists()

    requeued = subprocess.run(script, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert requeued.returncode == 0, requeued.stdout + requeued.stderr
    assert (run / "model.yaml").is_file()
    assert (tmp_path / "requeued").read_text() == "requeue 7\n"     # not requeued again
