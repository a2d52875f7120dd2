"""bench/compare.py: a benchmark stopped by a signal still reports what had finished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sitscli.data.prepared import SPLIT_CODES, PreparedWriter
from tests._bench import load_bench


@pytest.fixture
def bench():
    return load_bench("compare")


@pytest.fixture
def small_data(tmp_path, toy_pixel_series) -> Path:
    path = tmp_path / "small.sits"
    samples = toy_pixel_series(20, num_classes=2, num_bands=4, seed=0)
    with PreparedWriter(path, n_time=40, band_names=["B02", "B03", "B04", "B08"], class_names=["a", "b"],
                        sensor="S2", source="test") as writer:
        for i, s in enumerate(samples):
            writer.append(x=s["values"][None], valid=s["valid"][None], date=s["dates"][None], y=[int(s["y"])],
                          split=[SPLIT_CODES["train" if i < 14 else "test"]], group=[i])
    return path


def test_interrupted_benchmark_prints_the_finished_runs(bench, small_data, monkeypatch, capsys):
    """tempcnn finishes both seeds, ltae its first, then SIGTERM: the JSON keeps those three runs,
    says where it stopped, and the exit code is the engine's 75."""
    def fake_train(data, model, seed, out, **_):
        if model == "ltae" and seed == 1:
            raise bench.Interrupted(f"interrupted during {model} seed {seed}")
        return {"oa": 0.5 + seed / 10, "macro_f1": 0.5, "train_s": 1.0, "best_epoch": 3, "split": "test",
                "infer_samples_per_s": 10.0, "parameters": 7, "buffers": 0}

    monkeypatch.setattr(bench, "train_once", fake_train)
    with pytest.raises(SystemExit) as stop:
        bench.main([str(small_data), "--models", "tempcnn,ltae,lstm", "--seeds", "0,1"])
    assert stop.value.code == bench.INTERRUPTED_EXIT_CODE
    document = json.loads(capsys.readouterr().out)
    assert document["results"]["tempcnn"]["runs"] == 2 and document["results"]["tempcnn"]["oa"]["mean"] == 0.55
    assert document["results"]["ltae"]["runs"] == 1 and "lstm" not in document["results"]
    assert document["interrupted"].startswith("interrupted during ltae seed 1")
