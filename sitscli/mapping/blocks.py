"""Block bookkeeping for resumable map jobs.

A job writes into partial rasters beside its outputs (`.map.tif.partial`) and keeps a small JSON
sidecar (`.map.tif.partial.progress.json`): the job's fingerprint (input, model, grid, block size,
outputs) and, per finished block, the number of pixels it mapped. The sidecar is replaced
atomically after the block's data is on disk, so it never claims a block that is not there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sitscli.core.errors import ConfigError
from sitscli.core.io import write_text_atomic
from sitscli.core.progress import log


def partial_path(final: Path) -> Path:
    """The fixed (not random: a resumed run must find it) partial name of an output."""
    return final.with_name(f".{final.name}.partial")


@dataclass
class BlockProgress:
    """Finished blocks of a job and the pixels each one mapped."""

    path: Path
    fingerprint: dict
    blocks: dict[int, int] = field(default_factory=dict)   # block index -> mapped pixels

    @staticmethod
    def sidecar(partial: Path) -> Path:
        return partial.with_name(partial.name + ".progress.json")

    @classmethod
    def start(cls, partial: Path, fingerprint: dict, *, resume: bool) -> "BlockProgress":
        """Continue the job recorded beside `partial` (resume) or start afresh (discarding it)."""
        path = cls.sidecar(partial)
        fingerprint = json.loads(json.dumps(fingerprint))  # what a reload will compare against
        if path.exists() and resume:
            saved = json.loads(path.read_text())
            differ = sorted(k for k in fingerprint.keys() | saved["fingerprint"].keys()
                            if fingerprint.get(k) != saved["fingerprint"].get(k))
            if differ:
                raise ConfigError(f"the partial map {partial} was made with other {', '.join(differ)}: "
                                  "rerun without --resume to start again")
            return cls(path, fingerprint, {int(k): v for k, v in saved["blocks"].items()})
        if resume:
            log(f"--resume: no partial map beside {partial.name.removeprefix('.').removesuffix('.partial')}, starting from the beginning")
        elif path.exists():
            log("discarding the partial map of an earlier run (pass --resume to continue it instead)")
        state = cls(path, fingerprint)
        state._save()
        return state

    @property
    def done(self) -> set[int]:
        return set(self.blocks)

    @property
    def mapped_pixels(self) -> int:
        return sum(self.blocks.values())

    def mark(self, index: int, mapped_pixels: int) -> None:
        self.blocks[index] = mapped_pixels
        self._save()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _save(self) -> None:
        write_text_atomic(self.path, json.dumps({"fingerprint": self.fingerprint, "blocks": self.blocks}))
