"""LoRA adapters: only adapters and head train, base weights stay bitwise, merging is exact."""

from __future__ import annotations

import pytest
import torch

from sitscli.core.errors import ConfigError
from sitscli.data.batch import collate
from sitscli.models.lora import (DEFAULT_ALPHA, DEFAULT_DROPOUT, DEFAULT_RANK, DEFAULT_TARGETS, LoRALinear,
                                 apply_lora, merge_lora, parse_targets)
from sitscli.models.registry import DataInfo
from sitscli.models.sitsbert import build

HPARAMS = {"hidden": 32, "layers": 2, "heads": 4, "dropout": 0.1, "pooling": "cls"}
INFO = DataInfo(["B0", "B1", "B2", "B3"], [0.15] * 4, [0.1] * 4, ["a", "b", "c"])


def _adapted(targets="qkv"):
    torch.manual_seed(0)
    model = build(HPARAMS, INFO)
    adapters = apply_lora(model.encoder, parse_targets(targets), rank=4, alpha=8.0, dropout=0.1)
    return model, adapters


def test_targets_parse_and_bad_ones_are_refused():
    assert parse_targets("qkv") == ("q", "k", "v")
    assert parse_targets("qkv,ffn") == ("q", "k", "v", "fc1", "fc2")
    assert parse_targets("q,v") == ("q", "v")
    assert parse_targets("qkv,q") == ("q", "k", "v")
    with pytest.raises(ConfigError, match="lora-targets"):
        parse_targets("attention")


@pytest.mark.parametrize("targets, per_block", [("qkv", 3), ("qkv,ffn", 5)])
def test_only_targeted_layers_are_wrapped(targets, per_block):
    model, adapters = _adapted(targets)
    wrapped = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == per_block * HPARAMS["layers"] and len(adapters) == 2 * len(wrapped)
    assert not any(".out" in name for name in wrapped)      # the attention output projection stays plain


def test_default_adapters_on_reference_sitsbert_are_49152_weights():
    """r 16 on q and v of hidden 256 x 3 layers: 3 x 2 x 16 x (256 + 256) adapter weights."""
    model = build({"hidden": 256, "layers": 3, "heads": 8, "dropout": 0.1, "pooling": "max"}, INFO)
    adapters = apply_lora(model.encoder, parse_targets(DEFAULT_TARGETS), DEFAULT_RANK, DEFAULT_ALPHA, DEFAULT_DROPOUT)
    assert sum(p.numel() for p in adapters) == 49_152
    wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 6 and wrapped[0].scale == pytest.approx(24 / 16)


def test_training_changes_adapters_and_head_only(toy_pixel_series):
    model, adapters = _adapted("qkv,ffn")
    base = {k: v.clone() for k, v in model.encoder.state_dict().items() if "lora_" not in k}
    trainable = adapters + list(model.head.parameters())
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in trainable}
    head_before = model.head.linear.weight.clone()
    batch = collate(toy_pixel_series(24), compact=True)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.01)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(batch), batch["y"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.encoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())          # bitwise
    assert all(p.abs().sum() > 0 for p in adapters[1::2])                  # B left its zero init
    assert not torch.equal(model.head.linear.weight, head_before)


def test_a_fresh_adapter_leaves_the_model_unchanged(toy_pixel_series):
    torch.manual_seed(0)
    plain = build(HPARAMS, INFO).eval()
    model, _ = _adapted("qkv,ffn")
    batch = collate(toy_pixel_series(6), compact=True)
    with torch.no_grad():
        assert torch.allclose(model.eval()(batch), plain(batch))


def test_merged_export_loads_into_a_plain_model_and_gives_the_same_outputs(toy_pixel_series):
    model, adapters = _adapted("qkv,ffn")
    with torch.no_grad():
        for p in adapters:
            p.normal_(0, 0.1)                     # a trained-looking, non-zero update
    batch = collate(toy_pixel_series(6), compact=True)
    model.eval()
    with torch.no_grad():
        adapted = model(batch)
        merge_lora(model)
        assert not any(isinstance(m, LoRALinear) for m in model.modules())
        plain = build(HPARAMS, INFO).eval()
        plain.load_state_dict(model.state_dict())      # strict: the same keys as a plain model
        assert torch.allclose(plain(batch), adapted, atol=1e-5)
        assert not torch.allclose(build(HPARAMS, INFO).eval()(batch), adapted, atol=1e-3)
