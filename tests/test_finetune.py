"""Fine-tuning, probing and the classification report, on a tiny SITS-BERT and toy series."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from sitscli.core.errors import CheckpointError, ConfigError, DataContentError, OutputExistsError
from sitscli.data.batch import collate
from sitscli.data.prepared import SPLIT_CODES, PreparedWriter, open_prepared
from sitscli.data.torchdata import SeriesDataset
from sitscli.engine.checkpoint import load_model, read_card
from sitscli.engine.metrics import classification_report, predict_labels, row_normalised, write_report
from sitscli.engine.resume import load_state
from sitscli.models import registry, sitsbert
from sitscli.models.registry import ModelSpec
from sitscli.workflows.finetune import ClassificationTask, class_weights, evaluate_run, finetune, hold_out_groups
from sitscli.workflows.pretrain import pretrain
from sitscli.workflows.probe import probe

TINY = {"hidden": 32, "layers": 1, "heads": 4, "dropout": 0.0}
BANDS = ["B0", "B1", "B2", "B3"]
# Quick optimisation for the tests: CPU, a high learning rate, few epochs.
FAST = {"device": "cpu", "batch_size": 32, "lr": 2e-3, "epochs": 6}


def write_toy_dataset(path, series, *, n=240, band_names=BANDS, class_names=("a", "b", "c"), labelled=True,
                      group_size=1):
    """A prepared pixel dataset from conftest's toy series: splits 60 % train, 20 % val, 20 % test
    (by sample; groups of `group_size` consecutive samples), or all `unlabeled` without classes."""
    samples = series(n, num_classes=len(class_names) or 3, num_bands=len(band_names))
    pattern = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    with PreparedWriter(path, n_time=40, band_names=band_names, class_names=list(class_names) if labelled else [],
                        sensor="toy", source="tests") as writer:
        for i, s in enumerate(samples):
            split = SPLIT_CODES[pattern[i % 10]] if labelled else SPLIT_CODES["unlabeled"]
            writer.append(x=s["values"][None], valid=s["valid"][None], date=s["dates"][None],
                          y=[s["y"] if labelled else -1], split=[split], group=[i // group_size])
    return open_prepared(path).path


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory, toy_pixel_series):
    return write_toy_dataset(tmp_path_factory.mktemp("data") / "toy", toy_pixel_series)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, toy_data):
    out = tmp_path_factory.mktemp("runs") / "pre"
    return pretrain(out=out, data=toy_data, model="sitsbert", hparams=TINY, **{**FAST, "lr": 1e-3, "epochs": 8})


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, toy_data, pretrained):
    out = tmp_path_factory.mktemp("runs") / "ft"
    return finetune(out=out, data=toy_data, from_run=pretrained.run_dir, eval_date_shift=[0, 30], **FAST)


# ---- report --------------------------------------------------------------------------------------
def test_report_on_a_hand_checkable_confusion(tmp_path):
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 0])
    report = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert report["confusion"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report["samples"] == 6 and report["oa"] == pytest.approx(4 / 6)
    assert report["aa"] == pytest.approx((2 / 3 + 1 + 0) / 3)               # mean per-class recall
    # kappa = (p_o - p_e) / (1 - p_e), p_e = (3*3 + 2*3 + 1*0) / 36
    assert report["kappa"] == pytest.approx((4 / 6 - 15 / 36) / (1 - 15 / 36))
    assert report["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    b = report["per_class"][1]
    assert (b["name"], b["precision"], b["recall"], b["support"]) == ("b", pytest.approx(2 / 3), 1.0, 2)

    write_report(tmp_path, report, ["a", "b", "c"])
    assert json.loads((tmp_path / "metrics.json").read_text())["confusion"] == report["confusion"]
    lines = (tmp_path / "per_class.csv").read_text().splitlines()
    assert lines[0] == "class,name,precision,recall,f1,support" and lines[3].startswith("2,c,0.0,0.0,0.0,1")
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.allclose(row_normalised(np.array(report["confusion"])).sum(1), 1.0)


def test_a_class_absent_from_reference_and_predictions_is_left_out_of_the_averages():
    report = classification_report(np.array([0, 1]), np.array([0, 1]), ["a", "b", "never"])
    assert report["oa"] == report["aa"] == report["macro_f1"] == report["kappa"] == 1.0


# ---- pretrain and finetune -----------------------------------------------------------------------
def test_pretraining_lowers_the_pretext_loss(pretrained):
    history = pretrained.fit.history
    assert history[-1]["train_loss"] < history[0]["train_loss"] and history[-1]["val_loss"] < history[0]["val_loss"]
    assert read_card(pretrained.run_dir).task == "pretrain"


def test_finetuning_a_pretrained_encoder_beats_chance_on_the_test_split(finetuned, pretrained):
    report = finetuned.report
    assert report["split"] == "test" and report["samples"] == 48
    assert report["oa"] > 0.8                                     # chance: 1/3
    run = finetuned.run_dir
    for name in ("model.safetensors", "model.yaml", "metrics.json", "per_class.csv", "confusion.png", "config.yaml"):
        assert (run / name).is_file(), name
    card = read_card(run)
    assert card.task == "classify" and card.info.class_names == ["a", "b", "c"] and len(card.info.class_colors) == 3
    assert card.extra["mode"] == "full" and card.extra["from_run"] == str(pretrained.run_dir.resolve())


def test_date_shift_zero_is_the_plain_test_oa_and_the_saved_run_scores_the_same(finetuned, toy_data):
    report = finetuned.report
    assert report["date_shift"]["0"] == report["oa"]
    assert json.loads((finetuned.run_dir / "metrics.json").read_text())["date_shift"] == report["date_shift"]
    again = evaluate_run(finetuned.run_dir, toy_data, [0, 30], device="cpu")
    assert again["confusion"] == report["confusion"] and again["date_shift"] == report["date_shift"]


def test_frozen_mode_trains_the_head_only(tmp_path, toy_data, pretrained):
    result = finetune(out=tmp_path / "frozen", data=toy_data, from_run=pretrained.run_dir, mode="frozen", **FAST)
    assert result.trainable_parameters == 32 * 3 + 3               # one linear layer, hidden 32 -> 3 classes
    base = load_file(str(pretrained.run_dir / "model.safetensors"))
    tuned = load_file(str(result.run_dir / "model.safetensors"))
    encoder = [k for k in tuned if k.startswith("encoder.")]
    assert encoder and all(torch.equal(tuned[k], base[k]) for k in encoder)    # bitwise, BatchNorm-like buffers too
    assert result.fit.history[-1]["train_loss"] < result.fit.history[0]["train_loss"]


def test_lora_trains_adapters_and_head_and_exports_a_merged_plain_classifier(tmp_path, toy_data, pretrained):
    result = finetune(out=tmp_path / "lora", data=toy_data, from_run=pretrained.run_dir, mode="lora",
                      lora_rank=2, lora_alpha=4.0, lora_targets="qkv", **FAST)
    assert result.trainable_parameters == 3 * 2 * (2 * 32) + 32 * 3 + 3     # q, k, v: A (2, 32) + B (32, 2); head
    base = load_file(str(pretrained.run_dir / "model.safetensors"))
    _, _, best, _ = load_state(result.run_dir / "resume")                   # the adapted weights before merging
    saved = load_file(str(result.run_dir / "model.safetensors"))
    assert not any("lora" in k or ".base." in k for k in saved)               # a plain classifier
    for proj in ("q", "k", "v"):
        name = f"encoder.blocks.0.attn.{proj}"
        assert torch.equal(best[f"{name}.base.weight"], base[f"{name}.weight"])   # base bitwise unchanged
        delta = 4.0 / 2 * best[f"{name}.lora_b"] @ best[f"{name}.lora_a"]
        assert delta.abs().max() > 0
        assert torch.allclose(saved[f"{name}.weight"], base[f"{name}.weight"] + delta, atol=1e-6)
        assert torch.equal(saved[f"{name}.bias"], base[f"{name}.bias"])
    untouched = [k for k in saved if k.startswith("encoder.") and ".attn.q." not in k and ".attn.k." not in k
                 and ".attn.v." not in k]
    assert untouched and all(torch.equal(saved[k], base[k]) for k in untouched)
    assert read_card(result.run_dir).extra["lora"]["merged"] is True
    again = evaluate_run(result.run_dir, toy_data, device="cpu")            # loads without LoRA code, same scores
    assert again["confusion"] == result.report["confusion"]


def test_lora_trains_the_new_head_at_the_finetuning_lr_and_the_adapters_at_the_lora_lr(
        tmp_path, toy_data, pretrained, monkeypatch):
    """Issue 11: with the head at the adapters' 1e-5 the classifier stayed at its initial predictions.

    The model's fine-tuning lr is raised for the toy data (few steps); the LoRA lr stays SITS-BERT's 1e-5.
    """
    monkeypatch.setitem(sitsbert.TRAINING["finetune"], "lr", 5e-3)
    runs = {head_lr: finetune(out=tmp_path / f"head{head_lr}", data=toy_data, from_run=pretrained.run_dir, mode="lora",
                              head_lr=head_lr, device="cpu", batch_size=32, epochs=10) for head_lr in (None, 1e-5)}
    _, optimizer, _, _ = load_state(runs[None].run_dir / "resume")
    groups = [(group["lr"], len(group["params"])) for group in optimizer["param_groups"]]
    assert groups == [(1e-5, 4), (1e-5, 0), (5e-3, 1), (5e-3, 1)]   # q, v adapters (A, B); head weight; head bias
    assert yaml.safe_load((runs[None].run_dir / "config.yaml").read_text())["head_lr"] == 5e-3
    assert runs[None].report["oa"] > 0.6                              # chance: 1/3
    assert runs[1e-5].report["oa"] < 0.5                              # the head at the adapters' lr barely moves


def test_head_lr_gives_the_head_its_own_group_in_full_mode(tmp_path, toy_data, pretrained):
    result = finetune(out=tmp_path / "full", data=toy_data, from_run=pretrained.run_dir, head_lr=1e-2,
                      **{**FAST, "epochs": 1})
    _, optimizer, _, _ = load_state(result.run_dir / "resume")
    assert [group["lr"] for group in optimizer["param_groups"]] == [2e-3, 2e-3, 1e-2, 1e-2]
    assert sum(len(group["params"]) for group in optimizer["param_groups"][2:]) == 2        # head weight, bias


def test_the_same_seed_repeats_a_cpu_run_exactly(tmp_path, toy_data, pretrained):
    runs = [finetune(out=tmp_path / name, data=toy_data, from_run=pretrained.run_dir, mode="lora", seed=3,
                     **{**FAST, "epochs": 1}).run_dir for name in ("one", "two")]
    first, second = (load_file(str(run / "model.safetensors")) for run in runs)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_probe_is_frozen_with_mean_pooling_and_alise_probing_settings(tmp_path, toy_data, pretrained):
    result = probe(out=tmp_path / "probe", data=toy_data, from_run=pretrained.run_dir, epochs=3, device="cpu")
    options = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert (options["mode"], options["pooling"], options["optimizer"], options["schedule"], options["lr"]) == \
        ("frozen", "mean", "adam", "plateau", 1e-4)
    assert result.trainable_parameters == 32 * 3 + 3
    model, card = load_model(result.run_dir)
    assert card.hparams["pooling"] == "mean" and result.report["samples"] == 48
    with pytest.raises(ConfigError, match="--from RUN"):
        probe(out=tmp_path / "p2", data=toy_data)


def test_training_from_scratch_uses_the_scratch_epochs_unless_given(tmp_path, toy_data):
    result = finetune(out=tmp_path / "scratch", data=toy_data, model="sitsbert", hparams=TINY,
                      class_weights="balanced", **{**FAST, "epochs": 2})
    options = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert options["epochs"] == 2 and options["class_weights"] == "balanced"
    assert read_card(result.run_dir).extra["from_run"] is None


# ---- refusals ------------------------------------------------------------------------------------
def test_bad_inputs_are_refused_before_any_output(tmp_path, toy_data, pretrained, toy_pixel_series):
    unlabelled = write_toy_dataset(tmp_path / "unlabelled", toy_pixel_series, n=20, labelled=False)
    with pytest.raises(DataContentError, match="no classes"):
        finetune(out=tmp_path / "r1", data=unlabelled, model="sitsbert", **FAST)
    other_bands = write_toy_dataset(tmp_path / "bands", toy_pixel_series, n=20, band_names=["B2", "B3", "B4", "B8"])
    with pytest.raises(CheckpointError, match="bands"):
        finetune(out=tmp_path / "r2", data=other_bands, from_run=pretrained.run_dir, **FAST)
    with pytest.raises(ConfigError, match="--from RUN"):
        finetune(out=tmp_path / "r3", data=toy_data, **FAST)
    with pytest.raises(ConfigError, match="--from RUN"):
        finetune(out=tmp_path / "r4", data=toy_data, model="sitsbert", mode="lora", **FAST)
    with pytest.raises(CheckpointError, match="not 'alise'"):
        finetune(out=tmp_path / "r5", data=toy_data, from_run=pretrained.run_dir, model="alise", **FAST)
    with pytest.raises(OutputExistsError):
        finetune(out=pretrained.run_dir, data=toy_data, from_run=pretrained.run_dir, **FAST)
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 6))


def test_a_dataset_without_test_or_val_labels_is_refused(tmp_path, toy_pixel_series):
    samples = toy_pixel_series(12)
    with PreparedWriter(tmp_path / "train_only", n_time=40, band_names=BANDS, class_names=["a", "b", "c"],
                        sensor="toy", source="tests") as writer:
        for i, s in enumerate(samples):
            writer.append(x=s["values"][None], valid=s["valid"][None], date=s["dates"][None], y=[s["y"]],
                          split=[0], group=[i])
    with pytest.raises(DataContentError, match="no labelled test or val"):
        finetune(out=tmp_path / "run", data=tmp_path / "train_only.sits", model="sitsbert", **FAST)


# ---- helpers -------------------------------------------------------------------------------------
def test_balanced_class_weights_follow_inverse_train_frequency(toy_data):
    prepared = open_prepared(toy_data)
    weights = class_weights(prepared, "balanced")
    counts = np.bincount(prepared.ds["y"].values[prepared.indices("train")], minlength=3)
    assert torch.allclose(weights, torch.tensor(counts.sum() / (3 * counts), dtype=torch.float32))
    assert class_weights(prepared, "none") is None


def test_held_out_validation_never_cuts_a_parcel(tmp_path, toy_pixel_series):
    prepared = open_prepared(write_toy_dataset(tmp_path / "parcels", toy_pixel_series, n=80, group_size=4))
    dataset = SeriesDataset(prepared, splits=("train",), labeled_only=True)
    train, val = hold_out_groups(dataset, prepared, 0.25, seed=0)
    groups = prepared.ds["group"].values[dataset.indices]
    assert not set(groups[train.indices]) & set(groups[val.indices])
    assert len(train) + len(val) == len(dataset) and 0 < len(val) < len(dataset)


# ---- patch models --------------------------------------------------------------------------------
def test_patch_loss_and_predictions_use_labelled_pixels_only():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = torch.randint(0, 3, (2, 4, 4))
    y[:, 0] = -1
    task = ClassificationTask()
    labelled = y >= 0
    expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[labelled], y[labelled])
    assert torch.allclose(task._loss(logits, y), expected)
    none = task._loss(logits, torch.full_like(y, -1))
    none.backward()
    assert none.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))

    class Fixed(torch.nn.Module):
        def forward(self, batch):
            return logits.detach()[: batch["y"].shape[0]]

    samples = [{"values": np.zeros((1, 1, 4, 4), np.float32), "dates": np.zeros(1, np.int32),
                "valid": np.ones((1, 4, 4), bool), "y": y[i].numpy()} for i in range(2)]
    y_true, y_pred = predict_labels(Fixed(), samples, collate, device=torch.device("cpu"), batch_size=2)
    assert len(y_true) == int(labelled.sum()) and np.array_equal(y_true, y[labelled].numpy())
    assert np.array_equal(y_pred, logits.argmax(1)[labelled].numpy())


ALISE_TINY = {"d_model": 8, "layers": 1, "heads": 2, "d_ff": 16, "n_q": 2, "proj_heads": 2, "d_emb": 8,
              "unet_widths": [4, 4, 8, 8], "dropout": 0.0}


@pytest.fixture(scope="module")
def patch_data(tmp_path_factory):
    """10 patches of 8 x 8 pixels, two classes (left and right halves), the top row unlabelled."""

    rng = np.random.default_rng(0)
    start = int(np.datetime64("2020-01-01", "D").astype(np.int64))
    y = np.zeros((8, 8), np.int16)
    y[:, 4:] = 1
    y[0] = -1
    path = tmp_path_factory.mktemp("patches") / "patches"
    with PreparedWriter(path, n_time=6, band_names=["B0", "B1"], class_names=["a", "b"],
                        sensor="toy", source="tests", mode="patch", patch_size=8) as writer:
        for i in range(10):
            doy = np.sort(rng.choice(365, 6, replace=False))
            writer.append(x=rng.uniform(0, 0.3, (1, 6, 2, 8, 8)), valid=np.ones((1, 6, 8, 8), bool),
                          date=start + doy, y=y[None], split=[[0, 0, 0, 1, 2][i % 5]], group=[i])
    return open_prepared(path)


def test_alise_fine_tunes_on_patches_and_reports_every_labelled_pixel(tmp_path, patch_data):
    result = finetune(out=tmp_path / "run", data=patch_data.path, model="alise", hparams=ALISE_TINY,
                      epochs=1, batch_size=4, device="cpu")
    assert result.report["samples"] == 2 * 7 * 8               # 2 test patches, 7 labelled rows of 8
    assert read_card(result.run_dir).task == "classify"


def test_probing_keeps_a_frozen_encoder_in_eval_mode(tmp_path, patch_data):
    """BatchNorm statistics of the frozen ALISE encoder must not follow the probing data."""
    from sitscli.engine.checkpoint import save_model

    info = patch_data.info()
    info = type(info)(info.band_names, info.band_mean, info.band_std, reference_date=info.reference_date)
    pretrained = registry.get("alise").build(ALISE_TINY, info)              # no classes: the pre-training model
    save_model(tmp_path / "pre", pretrained, model_name="alise", hparams=ALISE_TINY, info=info, task="pretrain")
    result = probe(out=tmp_path / "probe", data=patch_data.path, from_run=tmp_path / "pre", epochs=1,
                   batch_size=4, device="cpu")
    base = load_file(str(tmp_path / "pre" / "model.safetensors"))
    tuned = load_file(str(result.run_dir / "model.safetensors"))
    running = [k for k in tuned if k.startswith("encoder.") and "running_" in k]
    assert running and all(torch.equal(tuned[k], base[k]) for k in running)
    assert result.trainable_parameters == 2 * 8 * 2 + 2         # 1 x 1 conv: n_q * d_model -> 2 classes


# ---- models not trained by the engine's cross-entropy --------------------------------------------
class Majority(torch.nn.Module):
    """Predicts the most frequent training class: logits (B, K) one-hot."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.register_buffer("logits", torch.zeros(num_classes))

    def forward(self, batch):
        return self.logits.expand(batch["y"].shape[0], -1)


def _majority_fit(train_set, hparams, info, seed):
    model = Majority(info.num_classes)
    counts = np.bincount([int(train_set[i]["y"]) for i in range(len(train_set))], minlength=info.num_classes)
    model.logits[int(counts.argmax())] = 1.0
    return model


def test_a_direct_fit_model_is_fitted_saved_and_reloaded_without_the_engine(tmp_path, toy_data, monkeypatch):
    spec = ModelSpec(name="majority", build=lambda hparams, info: Majority(info.num_classes), defaults={},
                     direct_fit=_majority_fit)
    monkeypatch.setitem(registry._MODELS, "majority", spec)
    result = finetune(out=tmp_path / "majority", data=toy_data, model="majority", device="cpu")
    assert result.fit.history == [] and result.report["oa"] == pytest.approx(1 / 3, abs=0.05)
    assert evaluate_run(result.run_dir, toy_data, device="cpu")["confusion"] == result.report["confusion"]
    with pytest.raises(ConfigError, match="not trained by gradient descent"):
        finetune(out=tmp_path / "m2", data=toy_data, model="majority", from_run=tmp_path / "majority")


def test_a_model_with_its_own_training_loss_trains_with_it():
    calls = []

    def own_loss(batch):
        calls.append(batch)
        return torch.tensor(0.5, requires_grad=True), {"elbo": -0.5}

    task = ClassificationTask(own_loss=own_loss)
    loss, logs = task.training_step(torch.nn.Identity(), {"y": torch.zeros(2, dtype=torch.long)})
    assert loss.item() == 0.5 and logs == {"elbo": -0.5} and len(calls) == 1
