"""Training engine robustness: exact resume after a stop, SIGTERM handling, 2-process DDP (gloo, CPU).

Every run is the tiny SITS-BERT pre-training of tests/_train_script.py on a small prepared dataset
(80 train + 16 val samples, batch 16: 5 steps an epoch, 3 epochs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import _train_script
from sitscli.core.errors import CheckpointError, ConfigError
from sitscli.data.prepared import SPLIT_CODES, PreparedWriter
from sitscli.engine.checkpoint import CARD, WEIGHTS, load_model
from sitscli.engine.signals import INTERRUPTED_EXIT_CODE
from sitscli.engine.trainer import RESUME_DIR

SCRIPT = Path(__file__).with_name("_train_script.py")
EPOCHS, STEPS_PER_EPOCH = 3, 5
N_TRAIN, N_VAL, N_TIME = 80, 16, 40


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, toy_pixel_series) -> Path:
    path = tmp_path_factory.mktemp("engine") / "tiny.sits"
    samples = toy_pixel_series(N_TRAIN + N_VAL, num_classes=3, num_bands=4, seed=1)
    with PreparedWriter(path, n_time=N_TIME, band_names=["B02", "B03", "B04", "B08"], class_names=["a", "b", "c"],
                        sensor="S2", source="test") as writer:
        for i, s in enumerate(samples):
            writer.append(x=s["values"][None], valid=s["valid"][None], date=s["dates"][None], y=[int(s["y"])],
                          split=[SPLIT_CODES["train" if i < N_TRAIN else "val"]], group=[i])
    return path


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory) -> Path:
    """An uninterrupted run."""
    run = tmp_path_factory.mktemp("reference") / "run"
    result = _train_script.train(tiny_data, run, epochs=EPOCHS, resume=False)
    assert not result.interrupted and (run / CARD).is_file()
    return run


def _subprocess_env() -> dict:
    # the worktree root too: the subprocess must import this checkout's sitscli, not an installed one
    path = [str(SCRIPT.parent), str(SCRIPT.parents[1]), os.environ.get("PYTHONPATH")]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, path))}


def _assert_same_weights(run_a: Path, run_b: Path | dict) -> None:
    a = load_file(str(run_a / WEIGHTS))
    b = run_b if isinstance(run_b, dict) else load_file(str(run_b / WEIGHTS))
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"weights differ: {differing[:5]}"


def _interrupted_state(run: Path) -> dict:
    return json.loads((run / RESUME_DIR / "state.json").read_text())


# The stop comes after the step's update and before the epoch ends: after the 5th step the state is
# "epoch 1 (0-based 0) fully trained, not yet validated"; after the 8th, 3 batches into epoch 2.
@pytest.mark.parametrize("stop_step, saved_at", [(STEPS_PER_EPOCH, (0, N_TRAIN)), (STEPS_PER_EPOCH + 3, (1, 48))],
                         ids=["end-of-epoch-1", "mid-epoch-2"])
def test_stopped_then_resumed_run_equals_uninterrupted_run(tiny_data, reference, tmp_path, stop_step, saved_at):
    run = tmp_path / "run"
    first = _train_script.train(tiny_data, run, epochs=EPOCHS, resume=False, sigterm_at_step=stop_step)
    assert first.interrupted
    assert not (run / CARD).exists() and (run / RESUME_DIR).is_dir()
    state = _interrupted_state(run)
    assert (state["epoch"], state["samples_done"]) == saved_at
    second = _train_script.train(tiny_data, run, epochs=EPOCHS, resume=True)
    assert not second.interrupted
    _assert_same_weights(run, reference)
    history = json.loads((run / "history.json").read_text())["epochs"]
    expected = json.loads((reference / "history.json").read_text())["epochs"]
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in expected]
    assert [r["val_loss"] for r in history] == [r["val_loss"] for r in expected]


def test_state_from_before_length_bucketing_resumes_with_random_batches(tiny_data, tmp_path):
    """A run saved before `bucket_by_length` existed (SITS-BERT's default is now on) goes on with the
    plain random batches it started with, so it still ends as the uninterrupted run."""
    uninterrupted = tmp_path / "uninterrupted"
    _train_script.train(tiny_data, uninterrupted, epochs=EPOCHS, resume=False, bucket_by_length=False)
    run = tmp_path / "run"
    _train_script.train(tiny_data, run, epochs=EPOCHS, resume=False, sigterm_at_step=STEPS_PER_EPOCH + 3,
                        bucket_by_length=False)
    state_file, options_file = run / RESUME_DIR / "state.json", run / "config.yaml"   # as an older version wrote them
    state = json.loads(state_file.read_text())
    del state["config"]["bucket_by_length"]
    state_file.write_text(json.dumps(state))
    options = yaml.safe_load(options_file.read_text())
    del options["bucket_by_length"]
    options_file.write_text(yaml.safe_dump(options))
    _train_script.train(tiny_data, run, epochs=EPOCHS, resume=True)
    _assert_same_weights(run, uninterrupted)


def test_sigterm_leaves_a_resumable_run_and_exit_code(tiny_data, reference, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tiny_data), str(run), "--epochs", str(EPOCHS),
                           "--sigterm-at-step", "7"], env=_subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == INTERRUPTED_EXIT_CODE, proc.stderr
    assert "stopped by SIGTERM" in proc.stderr and "--resume" in proc.stderr
    assert (run / RESUME_DIR / "state.safetensors").is_file() and not (run / CARD).exists()
    assert not list(run.glob(".*partial*"))                      # nothing half-written
    with pytest.raises(CheckpointError, match="--resume"):      # not a finished run, and it says what to do
        load_model(run)
    with pytest.raises(ConfigError, match="lr was 0.001, now 0.002"):   # a resume keeps the optimisation options
        _train_script.train(tiny_data, run, epochs=EPOCHS, resume=True, lr=2e-3)
    _train_script.train(tiny_data, run, epochs=EPOCHS, resume=True)
    _assert_same_weights(run, reference)
    model, card = load_model(run)
    assert card.task == "pretrain"


def test_ddp_two_processes_gloo(tiny_data, tmp_path):
    run, dump = tmp_path / "run", tmp_path / "weights"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(SCRIPT),
           str(tiny_data), str(run), "--epochs", str(EPOCHS), "--dump-weights", str(dump)]
    proc = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0 alone wrote the run; both ranks end with the same weights, which are the saved ones
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["config.yaml", "curves.png", "history.csv", "history.json", CARD, RESUME_DIR, WEIGHTS])
    rank0, rank1 = (load_file(str(tmp_path / f"weights.rank{r}.safetensors")) for r in (0, 1))
    _assert_same_weights(run, rank0)
    _assert_same_weights(run, rank1)
    history = json.loads((run / "history.json").read_text())["epochs"]
    assert len(history) == EPOCHS
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert np.isfinite(history[-1]["val_loss"])
    state = _interrupted_state(run)
    assert state["world_size"] == 2 and state["finished"] and len(state["rng"]) == 2


@pytest.mark.parametrize("script", ["pretrain_one_node.sbatch", "pretrain_multi_node.sbatch"])
def test_slurm_examples_parse_and_resume(script):
    path = Path(__file__).resolve().parents[1] / "examples" / "slurm" / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    text = path.read_text()
    assert "--signal=B:USR1@" in text and '--resume "$RUN"' in text and "scontrol requeue" in text


def test_the_kept_best_epoch_is_logged(tiny_data, tmp_path, capsys):
    result = _train_script.train(tiny_data, tmp_path / "run", epochs=2, resume=False)
    assert f"kept the weights of the best epoch, {result.fit.best_epoch} of 2 (val_loss " in capsys.readouterr().err


def test_a_best_epoch_at_the_end_of_the_budget_is_flagged():
    from sitscli.engine.trainer import still_improving
    assert still_improving(112, 112, "val_oa", False) and still_improving(111, 112, "val_oa", False)
    assert still_improving(96, 100, "val_loss", False) and not still_improving(95, 100, "val_loss", False)
    assert not still_improving(106, 112, "val_oa", False)          # 5 % of 112 is 6 epochs: 107-112
    assert not still_improving(20, 20, "val_loss", True)            # stopped early: it had stopped improving
    assert not still_improving(100, 100, "epoch", False)            # the last epoch is what is kept
    assert not still_improving(5, 5, "val_loss", False)             # too short to tell


def test_an_under_trained_run_says_so(tiny_data, tmp_path, capsys):
    """lr 1e-6 for 10 epochs: the validation loss still falls at the end, and the log says what to try."""
    result = _train_script.train(tiny_data, tmp_path / "run", epochs=10, resume=False, lr=1e-6)
    err = capsys.readouterr().err
    assert result.fit.best_epoch >= 9
    assert "was still improving when training ended" in err and "--epochs" in err


def test_min_total_steps_raises_the_epochs_on_small_data_only():
    from sitscli.engine.trainer import planned_epochs
    assert planned_epochs(100, 112, 32, 3200) == 800             # 4 steps an epoch -> 800 epochs
    assert planned_epochs(100, 129, 32, 3200) == 640             # a last partial batch is a step: 5 an epoch
    assert planned_epochs(100, 92_000, 1024, 3200) == 100        # 90 steps an epoch: the epochs as given
    assert planned_epochs(100, 112, 32, None) == 100


def test_min_total_steps_run_is_the_longer_run_and_resumes_exactly(tiny_data, reference, tmp_path):
    """1 epoch with at least 15 steps at 5 steps an epoch is planned as the reference's 3 epochs (the
    same schedule, bitwise the same weights), also when stopped mid-way and resumed; the epochs it
    planned are in history.json, and a resume with another minimum is refused."""
    raised = {"epochs": 1, "min_total_steps": EPOCHS * STEPS_PER_EPOCH}
    run = tmp_path / "run"
    first = _train_script.train(tiny_data, run, resume=False, sigterm_at_step=STEPS_PER_EPOCH + 3, **raised)
    assert first.interrupted and first.fit.planned_epochs == EPOCHS
    with pytest.raises(ConfigError, match="min_total_steps was 15, now 20"):
        _train_script.train(tiny_data, run, resume=True, epochs=1, min_total_steps=20)
    second = _train_script.train(tiny_data, run, resume=True, **raised)
    assert second.fit.planned_epochs == EPOCHS and len(second.fit.history) == EPOCHS
    assert json.loads((run / "history.json").read_text())["planned_epochs"] == EPOCHS
    _assert_same_weights(run, reference)


def test_epochs_asked_for_turn_a_models_min_total_steps_off():
    from sitscli.workflows.finetune import FinetuneOptions
    from sitscli.workflows.pretrain import resolve_run_options
    recipe = lambda _: {"epochs": 100, "min_total_steps": 3200}
    resolve = lambda **flags: resolve_run_options(FinetuneOptions, recipe, {"model": "mtan-svgp", **flags}, None, None)
    assert resolve()["min_total_steps"] == 3200
    assert resolve(epochs=None)["min_total_steps"] == 3200                 # None: not given
    assert resolve(epochs=3)["min_total_steps"] is None
    assert resolve(epochs=3, min_total_steps=50)["min_total_steps"] == 50


def test_monitor_epoch_keeps_the_last_epoch(tiny_data, tmp_path):
    """monitor `epoch` (max): the saved weights are the last epoch's (those of the resume state)."""
    from sitscli.engine.resume import load_state
    run = tmp_path / "run"
    result = _train_script.train(tiny_data, run, epochs=3, resume=False, monitor="epoch", monitor_mode="max")
    assert result.fit.best_epoch == 3 == len(result.fit.history)
    last, _, _, _ = load_state(run / RESUME_DIR)
    _assert_same_weights(run, {k: v for k, v in last.items() if k in load_file(str(run / WEIGHTS))})


def test_min_delta_stops_a_loss_that_only_creeps_down(tiny_data, tmp_path):
    """Early stopping with min_delta: only a fall of the pretext loss by more than 90 % since the last
    progress counts, so a run whose loss still falls stops after `patience` such epochs, while the
    same run at min_delta 0 goes on; the kept weights are still those of the lowest loss."""
    creeping = _train_script.train(tiny_data, tmp_path / "creeping", epochs=6, resume=False, patience=2, min_delta=0.9)
    losses = [row["val_loss"] for row in creeping.fit.history]
    assert creeping.fit.stopped_early and len(losses) == 3
    assert min(losses[1:]) > 0.1 * losses[0]                      # no epoch cut the loss tenfold
    assert creeping.fit.best_epoch == 1 + losses.index(min(losses))
    plain = _train_script.train(tiny_data, tmp_path / "plain", epochs=6, resume=False, patience=2)
    assert len(plain.fit.history) > 3


def test_min_delta_is_refused_out_of_range(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="min_delta"):
        _train_script.train(tiny_data, tmp_path / "run", epochs=1, resume=False, min_delta=1.5)
