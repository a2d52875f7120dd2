"""The random forest baseline: torch traversal = scikit-learn, safetensors round trip, learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestClassifier

from sitscli.core.errors import ConfigError
from sitscli.data.batch import collate
from sitscli.engine.checkpoint import load_model, save_model
from sitscli.models import rf
from sitscli.models.registry import DataInfo

INFO = DataInfo(["B03", "B04", "B08", "B11"], [0.1] * 4, [0.1] * 4, ["a", "b", "c"])
SMALL = {"n_estimators": 12, "max_depth": 8, "n_jobs": 1}


@pytest.fixture(scope="module")
def fitted(toy_pixel_series):
    train = toy_pixel_series(150, seed=1)
    hparams = dict(SMALL)
    model = rf.fit_random_forest(train, hparams, INFO, seed=0)
    return model, hparams, train


def test_torch_prediction_equals_sklearn(fitted, toy_pixel_series):
    model, _, train = fitted
    x_train, y_train = rf.training_features(train, model)
    forest = RandomForestClassifier(n_estimators=12, max_depth=8, n_jobs=1, random_state=0).fit(x_train, y_train)
    batch = collate(toy_pixel_series(40, seed=2), compact=True)
    x = model.features(batch)
    expected = forest.predict_proba(x.numpy())
    got = model.probabilities(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_missing_class_gets_zero_probability(toy_pixel_series):
    train = [s for s in toy_pixel_series(60, seed=3) if int(s["y"]) != 1]
    model = rf.fit_random_forest(train, dict(SMALL), INFO, seed=0)
    probs = model.probabilities(model.features(collate(train, compact=True)))
    assert probs.shape == (len(train), 3)
    assert torch.all(probs[:, 1] == 0)
    torch.testing.assert_close(probs.sum(1), torch.ones(len(train), dtype=probs.dtype))


def test_learns_toy_classes(fitted, toy_pixel_series):
    model, _, _ = fitted
    test = collate(toy_pixel_series(90, seed=4), compact=True)
    log_probs = model(test)
    assert log_probs.shape == (90, 3)
    assert (log_probs.argmax(1) == test["y"]).float().mean() > 0.8


def test_save_load_round_trip(fitted, toy_pixel_series, tmp_path):
    model, hparams, _ = fitted
    assert hparams["n_trees"] == 12 and hparams["max_nodes"] >= 3 and hparams["depth"] >= 1
    save_model(tmp_path, model, model_name="rf", hparams=hparams, info=INFO, task="classify")
    loaded, card = load_model(tmp_path)
    batch = collate(toy_pixel_series(20, seed=5), compact=True)
    torch.testing.assert_close(loaded(batch), model(batch))


def test_unfitted_forest_refuses_to_predict(toy_pixel_series):
    model = rf.build({}, INFO)
    with pytest.raises(ConfigError, match="no trees"):
        model(collate(toy_pixel_series(2), compact=True))


def test_finetune_fits_saves_and_reloads_the_forest(tmp_path, toy_pixel_series, monkeypatch):
    from test_mtan_svgp import _write_dataset

    from sitscli.workflows.finetune import finetune

    monkeypatch.setattr("sitscli.engine.trainer.plot_curves", lambda *args, **kwargs: None)
    data = _write_dataset(tmp_path / "toy.sits", toy_pixel_series)
    result = finetune(out=tmp_path / "run", data=data, model="rf", hparams=SMALL, device="cpu")
    assert result.report["oa"] > 0.8
    loaded, card = load_model(result.run_dir)
    assert card.hparams["n_trees"] == 12 and loaded.left.shape == (12, card.hparams["max_nodes"])


def test_float32_thresholds_split_exactly_as_float64():
    rng = np.random.default_rng(0)
    x = rng.random(2000).astype(np.float32)
    thresholds = (x.astype(np.float64) + np.roll(x, 1).astype(np.float64)) / 2   # sklearn-style midpoints
    thresholds[:10] = x[:10]                                                    # and exact ties
    floor = rf.float32_floor(thresholds)
    assert floor.dtype == np.float32
    np.testing.assert_array_equal(x[:, None] <= thresholds[None, :], x[:, None] <= floor[None, :])


def test_sklearn_and_torch_engines_agree(fitted, toy_pixel_series):
    model, _, _ = fitted
    x = model.features(collate(toy_pixel_series(60, seed=6), compact=True))
    by_torch = model.probabilities(x, engine="torch")
    by_sklearn = model.probabilities(x, engine="sklearn")
    assert by_sklearn.dtype == torch.float32 and by_sklearn.shape == (60, 3)
    torch.testing.assert_close(by_sklearn, by_torch, atol=1e-6, rtol=0)
    assert torch.equal(model.probabilities(x), by_sklearn)       # CPU default: scikit-learn
    assert model.sklearn_forest().n_features_in_ == x.shape[1]


def test_loaded_weights_replace_the_cached_forest(fitted, toy_pixel_series):
    model, hparams, _ = fitted
    x = model.features(collate(toy_pixel_series(30, seed=7), compact=True))
    copy = rf.build(hparams, INFO)
    copy.load_state_dict(model.state_dict())
    before = copy.probabilities(x)
    torch.testing.assert_close(before, model.probabilities(x))
    state = model.state_dict()
    state["value"] = state["value"].flip(-1)                     # classes reversed in every leaf
    copy.load_state_dict(state)
    torch.testing.assert_close(copy.probabilities(x), before.flip(-1))
    torch.testing.assert_close(copy.probabilities(x, engine="torch"), before.flip(-1))
