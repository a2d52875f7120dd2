"""Tiny SITS-BERT pre-training, run by tests/test_engine.py in a subprocess or under torchrun.

    python tests/_train_script.py DATA OUT [--epochs N] [--resume] [--sigterm-at-step K] [--dump-weights PREFIX]

Exits as the CLI does: 0 when finished, `signals.INTERRUPTED_EXIT_CODE` after a graceful stop.
`--sigterm-at-step K` sends this process a real SIGTERM right after its K-th training step (counted
from the start of this process), so the stop lands at a known place. `--dump-weights PREFIX` writes
each rank's final weights to PREFIX.rank<R>.safetensors, so a test can check that the DDP ranks
hold the same model.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from sitscli.cli.common import finish_run
from sitscli.engine.trainer import seed_everything
from sitscli.workflows import pretrain as pretrain_workflow

# Tiny SITS-BERT: one layer, hidden 32, 2 heads. lr 1e-3 so that a few epochs show the loss fall.
HPARAMS = {"hidden": 32, "layers": 1, "heads": 2}
TRAIN = {"batch_size": 16, "lr": 1e-3, "device": "cpu", "seed": 0, "warmup_epochs": 0.0, "min_lr": 0.0,
         "log_every_s": 1e9}


class SigtermAfter:
    """Wraps an engine Task: sends SIGTERM to this process after its `step`-th training step."""

    def __init__(self, task, step: int):
        self.task, self.step, self.steps = task, step, 0

    def __getattr__(self, name):          # on_epoch_start, validation_step: the wrapped task's
        return getattr(self.task, name)

    def training_step(self, model, batch):
        out = self.task.training_step(model, batch)
        self.steps += 1
        if self.steps == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
        return out


def train(data: Path, out: Path, *, epochs: int, resume: bool, sigterm_at_step: int | None = None,
          dump_weights: str | None = None, **options):
    """Run the pretrain workflow with the tiny settings (`options` override TRAIN); returns its RunResult."""
    make_pretext, fit = pretrain_workflow.make_pretext, pretrain_workflow.fit
    if sigterm_at_step is not None:
        pretrain_workflow.make_pretext = lambda name, **kw: SigtermAfter(make_pretext(name, **kw), sigterm_at_step)
    if dump_weights is not None:
        def fit_and_dump(model, *args, **kwargs):
            result = fit(model, *args, **kwargs)
            rank = int(os.environ.get("RANK", "0"))
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                      f"{dump_weights}.rank{rank}.safetensors")
            return result
        pretrain_workflow.fit = fit_and_dump
    # The workflow builds the model before the engine seeds, so the initial weights follow the
    # global generator: seed it here so that runs in one process start from the same weights.
    seed_everything(TRAIN["seed"])
    # Work-around: under torchrun every rank runs `check_run_output`, and a rank slower than rank 0
    # finds the run directory rank 0 just made and fails with "output exists". Only rank 0 may
    # check (see the report); until the workflow does so, the other ranks skip the check here
    # (`overwrite` only lets rank 0 remove a directory, so it is harmless on the others).
    overwrite = not pretrain_workflow.is_main_process()
    try:
        return pretrain_workflow.pretrain(
            out=None if resume else out, resume=out if resume else None, overwrite=overwrite, data=str(data),
            model="sitsbert", hparams=HPARAMS, epochs=epochs, **{**TRAIN, **options})
    finally:
        pretrain_workflow.make_pretext, pretrain_workflow.fit = make_pretext, fit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--sigterm-at-step", type=int)
    parser.add_argument("--dump-weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = train(args.data, args.out, epochs=args.epochs, resume=args.resume,
                   sigterm_at_step=args.sigterm_at_step, dump_weights=args.dump_weights)
    finish_run(result, "pretrain")      # the CLI's line and exit code after a graceful stop
    return 0


if __name__ == "__main__":
    sys.exit(main())
