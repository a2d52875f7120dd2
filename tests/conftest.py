"""Shared fixtures. Data is generated here or read in place from ../shared/data/real/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA}")
    return REAL_DATA


def _toy_pixel_series(n: int, num_classes: int = 3, num_bands: int = 4, seed: int = 0) -> list[dict]:
    """In-memory pixel samples whose class is the day of year of a vegetation peak.

    Each sample has its own irregular dates (20-40 in 2020) and ~20% cloudy (invalid) dates; the
    bands follow a Gaussian bump in time, peaking at a class-specific day, plus noise.
    """
    rng = np.random.default_rng(seed)
    start = int(np.datetime64("2020-01-01", "D").astype(np.int64))
    band_gain = np.linspace(0.1, 0.4, num_bands, dtype=np.float32)
    samples = []
    for i in range(n):
        label = i % num_classes
        t = int(rng.integers(20, 41))
        doy = np.sort(rng.choice(365, size=t, replace=False))
        peak = 60 + label * 240 / max(1, num_classes - 1)
        curve = np.exp(-0.5 * ((doy - peak) / 35.0) ** 2).astype(np.float32)
        values = 0.05 + curve[:, None] * band_gain + rng.normal(0, 0.01, (t, num_bands)).astype(np.float32)
        samples.append({
            "values": values.astype(np.float32),
            "dates": (start + doy).astype(np.int32),
            "valid": rng.random(t) > 0.2,
            "y": np.int64(label),
            "xy": np.zeros(2),
        })
    return samples


@pytest.fixture(scope="session")
def toy_pixel_series():
    """A function (n, num_classes=3, num_bands=4, seed=0) -> list of pixel sample dicts."""
    return _toy_pixel_series


def _held_out_accuracy(model, train: dict, test: dict, *, steps: int, lr: float, optimizer=torch.optim.Adam) -> float:
    """Train `model` full-batch with cross-entropy on `train` for `steps` steps; its accuracy on `test`."""
    opt = optimizer(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(train), train["y"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return (model(test).argmax(1) == test["y"]).float().mean().item()


@pytest.fixture(scope="session")
def held_out_accuracy():
    """A function (model, train_batch, test_batch, *, steps, lr, optimizer=Adam) -> test accuracy."""
    return _held_out_accuracy
