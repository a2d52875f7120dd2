"""SITS-BERT model and the contamination pretext, on tiny in-memory series."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from sitscli.core.dates import day_of_year as day_of_year_numpy
from sitscli.core.errors import ConfigError
from sitscli.data.batch import collate
from sitscli.engine.checkpoint import CARD, load_model, save_model
from sitscli.models import registry
from sitscli.models.registry import DataInfo
from sitscli.models.sitsbert import CheapDropout, DoyEncoding, build, day_of_year
from sitscli.ssl import make_pretext
from sitscli.ssl.contamination import contaminate

TINY = {"hidden": 32, "layers": 1, "heads": 4, "dropout": 0.0}


def _info(num_bands=4, classes=()):
    return DataInfo([f"B{i}" for i in range(num_bands)], [0.15] * num_bands, [0.1] * num_bands, list(classes))


def test_day_of_year_matches_numpy_across_leap_years():
    days = np.arange(-30000, 40000, 13)      # 1887 .. 2079
    assert np.array_equal(day_of_year(torch.from_numpy(days)).numpy(), day_of_year_numpy(days))
    leap_day = np.datetime64("2020-12-31", "D").astype(np.int64)
    assert day_of_year(torch.tensor([leap_day])).item() == 366


def test_registered_with_compact_series_of_at_most_64():
    spec = registry.get("sitsbert")
    assert spec.compact and spec.max_len == 64 and spec.pretext == "contamination"
    assert {k: spec.defaults[k] for k in ("hidden", "layers", "heads")} == {"hidden": 256, "layers": 3, "heads": 8}


def test_embedding_concatenates_band_projection_and_doy_encoding(toy_pixel_series):
    model = build(TINY, _info())
    batch = collate(toy_pixel_series(3), compact=True, max_len=64)
    embed, norm = model.encoder.embed, model.encoder.norm
    out = embed(norm(batch["values"]), batch["dates"])
    assert out.shape == (*batch["values"].shape[:2], 32)
    # First half: the band projection alone; second half: the DOY sinusoid alone.
    assert torch.allclose(out[..., :16], embed.bands(norm(batch["values"])))
    assert torch.allclose(out[..., 16:], DoyEncoding(16)(day_of_year(batch["dates"])))
    shifted = embed(norm(batch["values"]), batch["dates"] + 10)
    assert torch.equal(shifted[..., :16], out[..., :16]) and not torch.allclose(shifted[..., 16:], out[..., 16:])


def test_padding_does_not_change_the_outputs(toy_pixel_series):
    model = build({**TINY, "pooling": "mean"}, _info(classes="abc")).eval()
    samples = toy_pixel_series(4)
    alone = collate(samples[:1], compact=True)
    padded = collate(samples, compact=True)    # sample 0 gets padded to the longest series
    t = int(alone["valid"].sum())
    assert padded["valid"].shape[1] > t
    with torch.no_grad():
        _, tokens_alone = model.encoder(alone)
        _, tokens_padded = model.encoder(padded)
        assert torch.allclose(tokens_padded[0, :t], tokens_alone[0], atol=1e-5)
        assert torch.allclose(model(padded)[0], model(alone)[0], atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_classifier_and_pretraining_shapes(pooling, toy_pixel_series):
    batch = collate(toy_pixel_series(5), compact=True, max_len=64)
    classifier = build({**TINY, "pooling": pooling}, _info(classes="abc"))
    assert classifier(batch).shape == (5, 3)
    pretrain = build(TINY, _info())
    assert pretrain(batch).shape == batch["values"].shape
    assert pretrain.encoder.represent(batch).shape == (5, 32)


def test_a_series_without_clear_observation_gives_finite_outputs(toy_pixel_series):
    sample = toy_pixel_series(1)[0]
    sample["valid"][:] = False
    batch = collate([sample], compact=True)
    for pooling in ("cls", "mean", "max"):
        assert torch.isfinite(build({**TINY, "pooling": pooling}, _info(classes="ab"))(batch)).all()


def test_bad_hyper_parameters_are_refused():
    with pytest.raises(ConfigError, match="multiple of heads"):
        build({**TINY, "hidden": 30}, _info())
    with pytest.raises(ConfigError, match="pooling"):
        build({**TINY, "pooling": "first"}, _info(classes="ab"))


def test_attention_dropout_is_its_own_hyper_parameter_off_by_default():
    model = build({"hidden": 32, "layers": 1, "heads": 4}, _info(classes="ab"))
    block = model.encoder.blocks[0]
    assert block.attn.dropout == 0.0                                      # fused attention kernels stay usable
    assert block.dropout.p == block.ff.dropout.p == model.encoder.dropout.p == 0.1
    assert build({**TINY, "attention_dropout": 0.1}, _info()).encoder.blocks[0].attn.dropout == 0.1
    with pytest.raises(ConfigError, match="attention_dropout"):
        registry.get("sitsbert").check_hparams({"attention_dropout": 1.0})


def test_cheap_dropout_drops_p_of_the_elements_and_scales_the_rest():
    dropout = CheapDropout(0.1).train()
    x = torch.ones(1_000_003, requires_grad=True)            # not a multiple of 4: the last word is cut
    torch.manual_seed(0)
    y = dropout(x)
    dropped = y == 0
    for slot in range(4):                                     # each 16-bit slice of a word is a fair draw
        assert abs(dropped[slot::4].float().mean().item() - 0.1) < 0.003
    assert torch.allclose(y[~dropped], torch.tensor(1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())                    # the gradient goes through the same mask
    torch.manual_seed(0)
    assert torch.equal(dropout(x), y)                         # from torch's generator: a seeded run repeats
    assert torch.equal(dropout.eval()(x), x) and torch.equal(CheapDropout(0.0).train()(x), x)


def test_a_model_card_without_attention_dropout_still_loads(tmp_path, toy_pixel_series):
    """Cards written before `attention_dropout` existed have no such key: the model loads with the default."""
    old_hparams = {"hidden": 32, "layers": 1, "heads": 4, "dropout": 0.1, "pooling": "max"}
    model = build(old_hparams, _info(classes="ab")).eval()
    save_model(tmp_path, model, model_name="sitsbert", hparams=old_hparams, info=_info(classes="ab"), task="classify")
    assert "attention_dropout" not in yaml.safe_load((tmp_path / CARD).read_text())["hparams"]
    loaded, card = load_model(tmp_path)
    batch = collate(toy_pixel_series(4), compact=True)
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    assert loaded.encoder.blocks[0].attn.dropout == 0.0


def test_contamination_picks_15_percent_of_clear_observations_only():
    values = torch.rand(400, 60, 5) * 0.3
    valid = torch.rand(400, 60) < 0.7
    valid[:, 50:] = False                                       # trailing padding
    out, picked = contaminate(values, valid, generator=torch.Generator().manual_seed(0))
    assert not (picked & ~valid).any()
    assert abs(picked.sum().item() / valid.sum().item() - 0.15) < 0.01
    delta = out - values
    assert torch.equal(delta[~picked], torch.zeros_like(delta[~picked]))
    noise = delta[picked]                                       # (n, C)
    assert noise.abs().max() <= 0.5 + 1e-6 and noise.abs().min() > 0
    same_sign = (noise > 0).all(1) | (noise < 0).all(1)         # a whole observation brightens or darkens
    assert same_sign.all()
    assert abs((noise[:, 0] > 0).float().mean().item() - 0.5) < 0.05
    # Noise is uniform on [0, 0.5] in magnitude: mean 0.25.
    assert abs(noise.abs().mean().item() - 0.25) < 0.01


def test_contamination_task_keeps_dates_and_scores_picked_observations_only(toy_pixel_series):
    seen = {}

    class Spy(torch.nn.Module):
        """Predicts the original series exactly except at padding: loss must be 0."""
        def forward(self, batch):
            seen.update(batch)
            return original["values"].clone()

    original = collate(toy_pixel_series(16), compact=True)
    task = make_pretext("contamination")
    loss, _ = task.training_step(Spy(), dict(original))
    assert torch.equal(seen["dates"], original["dates"]) and torch.equal(seen["valid"], original["valid"])
    assert not torch.equal(seen["values"], original["values"])
    assert loss.item() == 0.0


def test_validation_contamination_repeats_each_epoch(toy_pixel_series):
    model = build(TINY, _info()).eval()
    batch = collate(toy_pixel_series(8), compact=True)
    task = make_pretext("contamination")
    task.on_epoch_start(0)
    first = task.validation_step(model, batch)["loss"]
    task.on_epoch_start(1)
    assert task.validation_step(model, batch)["loss"] == first


def test_pretext_loss_falls(toy_pixel_series):
    torch.manual_seed(0)
    model = build(TINY, _info())
    task = make_pretext("contamination")
    samples = toy_pixel_series(64, seed=1)
    held_out = collate(toy_pixel_series(64, seed=2), compact=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def held_out_loss():
        model.eval()
        task.on_epoch_start(0)
        loss = task.validation_step(model, held_out)["loss"]
        model.train()
        return loss

    before = held_out_loss()
    for step in range(120):
        batch = collate(samples[(step % 4) * 16:(step % 4 + 1) * 16], compact=True)
        loss, _ = task.training_step(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_loss()
    assert after < 0.3 * before, (before, after)


def test_classifier_learns_the_toy_classes(toy_pixel_series, held_out_accuracy):
    torch.manual_seed(0)
    model = build({**TINY, "pooling": "mean"}, _info(classes="abc"))
    train = collate(toy_pixel_series(96, seed=3), compact=True)
    test = collate(toy_pixel_series(60, seed=4), compact=True)
    accuracy = held_out_accuracy(model, train, test, steps=60, lr=3e-3, optimizer=torch.optim.AdamW)
    assert accuracy > 0.8      # chance is 1/3
