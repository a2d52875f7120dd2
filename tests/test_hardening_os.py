"""Errors of the operating system (full disk, read-only folder, damaged store, impossible sizes):
one line, a documented exit code, nothing left behind."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from sitscli.core.errors import OS_ERROR_EXIT_CODE
from sitscli.core.io import output_locks
from _cli import sits
from test_change_detect import data  # noqa: F401  (fixture)
from test_finetune import write_toy_dataset
from test_predict_map import ArrayCube, run_dir  # noqa: F401  (fixture)
from sitscli.workflows.predict_map import predict_map

TINY = ["--hparam", "hidden=32", "--hparam", "layers=1", "--hparam", "heads=4", "--device", "cpu", "--epochs", "1"]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory, toy_pixel_series):
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "toy", toy_pixel_series, n=40)


def _full_disk_for(monkeypatch, marker: str) -> None:
    """Writes of files whose name contains `marker` leave an empty file and fail with ENOSPC, as on a full disk."""
    real = Path.write_text

    def write_text(self, data, *args, **kwargs):
        if marker in self.name:
            real(self, "")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def _read_only(monkeypatch, folder: Path) -> None:
    """Creating anything inside `folder` fails with EACCES, as in a folder without write permission
    (the tests run as root, whom chmod does not stop)."""
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path) -> bool:
        return Path(os.path.abspath(path)).parent == folder

    def guarded_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and inside(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if inside(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)


def _one_error_line(err: str, *expected: str) -> None:
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and all(e in lines[-1] for e in expected), err
    assert "Traceback" not in err


def test_a_full_disk_while_saving_the_options_leaves_nothing(tmp_path, monkeypatch, capsys, toy_data):
    _full_disk_for(monkeypatch, "config.yaml")
    code, _, err = sits(monkeypatch, capsys, "pretrain", toy_data, "--out", tmp_path / "run", *TINY)
    assert code == OS_ERROR_EXIT_CODE
    _one_error_line(err, "No space left on device", "free some space")
    assert list(tmp_path.iterdir()) == []                      # no 0-byte config.yaml, no lock


def test_a_full_disk_during_a_map_leaves_nothing(run_dir, tmp_path, monkeypatch):  # noqa: F811
    _full_disk_for(monkeypatch, "progress.json")
    with output_locks(), pytest.raises(OSError) as caught:
        predict_map(ArrayCube(), model=run_dir, out=tmp_path / "map.tif", block=16, device="cpu")
    assert caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []                      # no partial raster, no .progress.json.tmp


def test_a_read_only_output_folder_is_one_line(tmp_path, monkeypatch, capsys, toy_data):
    folder = tmp_path / "read-only"
    folder.mkdir()
    _read_only(monkeypatch, folder)
    code, _, err = sits(monkeypatch, capsys, "finetune", toy_data, "--model", "sitsbert", "--out", folder / "run", *TINY)
    assert code == OS_ERROR_EXIT_CODE
    _one_error_line(err, "Permission denied", "write to a folder you may write to")
    assert list(folder.iterdir()) == []


def test_a_missing_parent_folder_of_the_map_is_made(run_dir, tmp_path):  # noqa: F811
    with output_locks():
        predict_map(ArrayCube(), model=run_dir, out=tmp_path / "new" / "maps" / "map.tif", block=16, device="cpu")
    assert (tmp_path / "new" / "maps" / "map.tif").is_file()


def test_a_patch_larger_than_the_raster_is_refused_before_any_allocation(data, tmp_path, monkeypatch, capsys):  # noqa: F811
    code, _, err = sits(monkeypatch, capsys, "prepare", "s2", data["year0"], "--labels", data["parcels"],
                        "--class-field", "crop", "--patch-size", "100000", "--out", tmp_path / "p")
    assert code == 2
    _one_error_line(err, "--patch-size 100000 is larger than the raster")
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_chunk_is_one_line(tmp_path, monkeypatch, capsys, toy_data):
    damaged = tmp_path / "damaged.sits"
    shutil.copytree(toy_data, damaged)
    chunk = next(p for p in (damaged / "data.zarr" / "x").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:100])
    code, _, err = sits(monkeypatch, capsys, "pretrain", damaged, "--out", tmp_path / "run", *TINY)
    assert code == 1
    _one_error_line(err, "cannot be read", "the store is damaged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.sits"]
