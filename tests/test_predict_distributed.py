"""One map on two processes (torchrun, gloo on CPU): the ranks share the blocks, rank 0 writes, and
the map equals the one-process map pixel for pixel, also after a kill and --resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio

from test_predict_map import _map, run_dir  # noqa: F401  (the stand-in classifier, its run, the 9-block map)

TESTS = Path(__file__).resolve().parent

# Run by each rank: the map of test_predict_map's ArrayCube (9 blocks of 16 px), rank 0 killed with
# SIGKILL after writing KILL_AT blocks when KILL_AT > 0.
RANK_SCRIPT = """
import os, signal, sys
from pathlib import Path
import test_predict_map as t
run, out, kill_at, resume = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
def kill(done):
    if done == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
summary = t._map(run, out, probabilities=out / "p.tif", resume=resume, after_block=kill if kill_at else None)
# one write of one line: the two ranks share the pipe, and print() writes its pieces apart
os.write(1, f"SUMMARY {os.environ['RANK']} {summary['blocks_resumed']} {summary['pixels_mapped']}\\n".encode())
"""


def _torchrun(tmp_path: Path, run: Path, out: Path, kill_at: int = 0, resume: bool = False) -> subprocess.CompletedProcess:
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(script),
           str(run), str(out), str(kill_at), "1" if resume else "0"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_two_processes_make_the_one_process_map(run_dir, tmp_path):  # noqa: F811
    (tmp_path / "one").mkdir()
    _map(run_dir, tmp_path / "one", probabilities=tmp_path / "one" / "p.tif")
    (tmp_path / "two").mkdir()
    proc = _torchrun(tmp_path, run_dir, tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = sorted(line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("SUMMARY"))
    assert summaries == [["0", "0", str(40 * 36 - 16)], ["1", "0", "None"]]   # rank 0 wrote the map
    for name in ("map.tif", "p.tif"):
        np.testing.assert_array_equal(_read(tmp_path / "two" / name), _read(tmp_path / "one" / name))
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if p.name.startswith(".")) == []


def test_two_processes_resume_after_a_kill(run_dir, tmp_path):  # noqa: F811
    (tmp_path / "one").mkdir()
    _map(run_dir, tmp_path / "one")
    (tmp_path / "two").mkdir()
    killed = _torchrun(tmp_path, run_dir, tmp_path / "two", kill_at=4)
    assert killed.returncode != 0 and not (tmp_path / "two" / "map.tif").exists()
    progress = json.loads((tmp_path / "two" / ".map.tif.partial.progress.json").read_text())
    assert len(progress["blocks"]) == 4
    # resumed with two processes (it could be any number: the files are those of one process)
    proc = _torchrun(tmp_path, run_dir, tmp_path / "two", resume=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any(line.split()[1:3] == ["0", "4"] for line in proc.stdout.splitlines() if line.startswith("SUMMARY"))
    np.testing.assert_array_equal(_read(tmp_path / "two" / "map.tif"), _read(tmp_path / "one" / "map.tif"))
