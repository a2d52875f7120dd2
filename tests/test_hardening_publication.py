"""predict-map's publication of several outputs is resumable; every option is checked before the first byte."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sitscli.core.errors import ConfigError, OutputExistsError
from sitscli.workflows.change_detect import change_detect
from sitscli.workflows.predict_map import predict_map
from test_change_detect import data  # noqa: F401  (fixture)
from test_predict_map import ArrayCube, _map, _read, run_dir  # noqa: F401  (fixture)

KILLED_BETWEEN_RENAMES = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import test_predict_map as t
from pathlib import Path
def kill(published):
    os.kill(os.getpid(), signal.SIGKILL)      # the map is in place, the probabilities not yet
t._map(Path({run!r}), Path({out!r}), probabilities=Path({out!r}) / "p.tif", confidence=Path({out!r}) / "c.tif",
       after_publish=kill)
"""


def test_a_kill_between_the_final_renames_is_finished_by_resume(run_dir, tmp_path):
    code = KILLED_BETWEEN_RENAMES.format(tests=str(Path(__file__).parent), run=str(run_dir), out=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (tmp_path / "map.tif").exists() and not (tmp_path / "p.tif").exists()
    summary = _map(run_dir, tmp_path, probabilities=tmp_path / "p.tif", confidence=tmp_path / "c.tif", resume=True)
    assert summary["blocks_resumed"] == summary["blocks"]
    (tmp_path / "full").mkdir()
    _map(run_dir, tmp_path / "full", probabilities=tmp_path / "full" / "p.tif", confidence=tmp_path / "full" / "c.tif")
    for name in ("map.tif", "p.tif", "c.tif"):
        np.testing.assert_array_equal(_read(tmp_path / name), _read(tmp_path / "full" / name))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "full", "map.clr", "map.qml", "map.tif", "map.tif.aux.xml",
                                                          "p.tif"]


def test_without_resume_published_outputs_are_not_replaced(run_dir, tmp_path):
    def stop(path: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _map(run_dir, tmp_path, probabilities=tmp_path / "p.tif", after_publish=stop)
    with pytest.raises(OutputExistsError):
        _map(run_dir, tmp_path, probabilities=tmp_path / "p.tif")
    _map(run_dir, tmp_path, probabilities=tmp_path / "p.tif", resume=True)
    assert (tmp_path / "p.tif").exists() and not (tmp_path / ".p.tif.partial").exists()


@pytest.mark.parametrize("option, match", [({"compress": "rar"}, "--compress 'rar'"),
                                           ({"device": "quantum"}, "--device 'quantum'"),
                                           ({"prob_dtype": "int3"}, "--prob-dtype")])
def test_bad_options_stop_predict_map_before_the_first_byte(option, match, run_dir, tmp_path):
    options = {"device": "cpu", **option}
    with pytest.raises(ConfigError, match=match):
        predict_map(ArrayCube(), model=run_dir, out=tmp_path / "new" / "map.tif", probabilities=tmp_path / "new" / "p.tif",
                    **options)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_reference_field_stops_change_detect_before_the_first_byte(data, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="no field 'nope'"):
        change_detect(data["year0"], data["year1"], out=tmp_path / "gf.tif", method="gapfill", threshold="otsu",
                      reference=data["parcels"], reference_field="nope", block=32)
    assert list(tmp_path.iterdir()) == []


def test_demo_with_a_wrong_device_writes_nothing(tmp_path, monkeypatch, capsys):
    from _cli import sits

    code, _, err = sits(monkeypatch, capsys, "demo", "--out", tmp_path / "demo", "--device", "quantum")
    assert code == 2 and err.count("\n") == 1 and "--device 'quantum'" in err
    assert list(tmp_path.iterdir()) == []
