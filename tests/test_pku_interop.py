"""Loading PKU safe-rlhf score models (beaver-7b-*-reward / -cost layout), written here in tiny form.

Layout: config.json = the Llama config + ``architectures: ["LlamaForScore"]``, ``score_type``,
``score_dim``, ``score_bias`` (older releases: ``bias``), ``do_normalize``, ``normalizer_type``,
``mean``, ``var``, ``momentum``; weights ``model.*`` (LlamaModel), ``score_head.weight`` /
``score_head.bias`` and the normaliser buffers ``normalizer.{mean,var,count}``; sharded
safetensors with ``model.safetensors.index.json`` (or one file, or .bin).
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaModel

from saferlhf.data.templates import Template
from saferlhf.models.score_model import ScoreModel, load_pku_score_model
from saferlhf.models.tiny import tiny_llama_config

VOCAB = 40


def _write_pku(
    d,
    *,
    score_type="reward",
    normalizer_type="ExponentialMovingAverage",
    do_normalize=True,
    mean=0.7,
    var=2.25,
    momentum=0.9,
    shards=2,
    fmt="safetensors",
    bias_key="score_bias",
    stats_in_weights=False,
    seed=0,
):
    """A tiny PKU-style score checkpoint; returns (backbone, head weight, head bias)."""
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(seed)
    cfg = tiny_llama_config(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4)
    backbone = LlamaModel(cfg).eval()
    w = torch.randn(1, cfg.hidden_size) * 0.2
    b = torch.randn(1)
    sd = {f"model.{k}": v.clone().contiguous() for k, v in backbone.state_dict().items()}
    sd["score_head.weight"] = w.clone()
    sd["score_head.bias"] = b.clone()
    if stats_in_weights:
        sd["normalizer.mean"] = torch.tensor([mean])
        sd["normalizer.var"] = torch.tensor([var])
        sd["normalizer.count"] = torch.tensor([1234])
    conf = cfg.to_dict()
    conf.update(
        architectures=["LlamaForScore"],
        model_type="llama",
        score_type=score_type,
        score_dim=1,
        do_normalize=do_normalize,
        normalizer_type=normalizer_type,
        mean=[mean] if not stats_in_weights else [0.0],  # weights win when they hold stats
        var=[var] if not stats_in_weights else [1.0],
        momentum=momentum,
    )
    conf[bias_key] = True
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(conf, f)

    keys = sorted(sd)
    ext = "safetensors" if fmt == "safetensors" else "bin"
    stem = "model" if fmt == "safetensors" else "pytorch_model"

    def write(part: dict, name: str) -> None:
        if fmt == "safetensors":
            save_file(part, os.path.join(d, name), metadata={"format": "pt"})
        else:
            torch.save(part, os.path.join(d, name))

    if shards == 1:
        write(sd, f"{stem}.{ext}")
    else:
        # the head lands in the last shard, the backbone is split across all of them
        chunks = [keys[i::shards] for i in range(shards)]
        weight_map = {}
        for i, chunk in enumerate(chunks):
            name = f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
            write({k: sd[k] for k in chunk}, name)
            weight_map.update({k: name for k in chunk})
        index = {
            "metadata": {"total_size": sum(v.numel() * v.element_size() for v in sd.values())},
            "weight_map": weight_map,
        }
        with open(os.path.join(d, f"{stem}.{ext}.index.json"), "w") as f:
            json.dump(index, f)
    return backbone, w, b


def _batch():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14], [0, 0, 0, 0, 3, 4]])
    mask = (torch.arange(6)[None] >= torch.tensor([[2], [0], [4]])).long()
    return ids, mask


def _manual_end_scores(backbone, w, b, ids, mask):
    """Unpadded backbone + linear at the last token, row by row (the ground truth)."""
    rows = []
    with torch.no_grad():
        for i in range(ids.shape[0]):
            real = ids[i][mask[i].bool()][None]
            h = backbone(input_ids=real).last_hidden_state[0, -1]
            rows.append(h @ w.T + b)
    return torch.stack(rows)


@pytest.mark.parametrize("shards,fmt", [(2, "safetensors"), (1, "safetensors"), (2, "bin")])
def test_pku_reward_model_loads(tmp_path, shards, fmt):
    backbone, w, b = _write_pku(tmp_path / "rm", shards=shards, fmt=fmt)
    if shards == 2:
        assert os.path.isfile(
            tmp_path
            / "rm"
            / f"{'model.safetensors' if fmt == 'safetensors' else 'pytorch_model.bin'}.index.json"
        )
    model = ScoreModel.from_pretrained(tmp_path / "rm").eval()  # layout detected
    cfg = model.score_config
    assert cfg.score_type == "reward" and cfg.score_dim == 1 and cfg.score_bias
    assert cfg.normalizer == "ema" and cfg.momentum == 0.9 and cfg.do_normalize
    assert model.template == Template()  # the classic Beaver template
    torch.testing.assert_close(model.score_head.weight, w)
    torch.testing.assert_close(model.score_head.bias, b)
    for k, v in backbone.state_dict().items():
        torch.testing.assert_close(model.backbone.state_dict()[k], v, msg=k)

    ids, mask = _batch()
    raw = _manual_end_scores(backbone, w, b, ids, mask)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    expected = (raw - 0.7) / (1.5 + 1e-8)  # affine with the config's mean / var
    torch.testing.assert_close(out.end_scores, expected, atol=1e-5, rtol=0)
    with torch.no_grad():
        raw_out = model.set_normalize(False)(input_ids=ids, attention_mask=mask).end_scores
    torch.testing.assert_close(raw_out, raw, atol=1e-5, rtol=0)


def test_pku_cost_model_scale_only_and_stats_from_weights(tmp_path):
    backbone, w, b = _write_pku(
        tmp_path / "cm",
        score_type="cost",
        normalizer_type="RunningMeanStd",
        mean=-3.0,
        var=4.0,
        bias_key="bias",
        stats_in_weights=True,  # older config key; stats as buffers
    )
    model = load_pku_score_model(tmp_path / "cm").eval()
    assert model.score_type == "cost" and model.score_config.normalizer == "running"
    assert model.normalizer.mean.item() == -3.0 and model.normalizer.var.item() == 4.0
    assert int(model.normalizer.count) == 1234
    ids, mask = _batch()
    raw = _manual_end_scores(backbone, w, b, ids, mask)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).end_scores
    torch.testing.assert_close(out, raw / (2.0 + 1e-8), atol=1e-5, rtol=0)  # scale only, no shift
    assert torch.equal(torch.sign(out), torch.sign(raw))


def test_pku_null_normalizer_and_normalize_override(tmp_path):
    backbone, w, b = _write_pku(
        tmp_path / "rm", normalizer_type=None, do_normalize=False, mean=1.0, var=9.0
    )
    off = ScoreModel.from_pretrained(tmp_path / "rm").eval()
    on = ScoreModel.from_pretrained(tmp_path / "rm", normalize=True).eval()
    assert off.score_config.normalizer == "none" and not off.do_normalize
    ids, mask = _batch()
    raw = _manual_end_scores(backbone, w, b, ids, mask)
    with torch.no_grad():
        torch.testing.assert_close(
            off(input_ids=ids, attention_mask=mask).end_scores, raw, atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            on(input_ids=ids, attention_mask=mask).end_scores,
            (raw - 1.0) / (3.0 + 1e-8),
            atol=1e-5,
            rtol=0,
        )
    # "none" = frozen statistics: training does not move them
    on.train()(input_ids=ids, attention_mask=mask)
    assert on.normalizer.mean.item() == 1.0 and on.normalizer.var.item() == 9.0


def test_pku_model_resaves_in_our_format(tmp_path):
    _write_pku(tmp_path / "pku", shards=2)
    model = ScoreModel.from_pretrained(tmp_path / "pku").eval()
    model.save_pretrained(tmp_path / "ours")
    conf = json.loads((tmp_path / "ours" / "config.json").read_text())
    # not a PKU *ForScore any more, and never taken for a *ForSequenceClassification (saferlhf export)
    assert conf["architectures"] == ["SaferlhfScoreModel"]
    assert not {"score_type", "normalizer_type", "do_normalize", "mean", "var"} & set(conf)
    again = ScoreModel.from_pretrained(tmp_path / "ours").eval()
    ids, mask = _batch()
    with torch.no_grad():
        torch.testing.assert_close(
            again(input_ids=ids, attention_mask=mask).end_scores,
            model(input_ids=ids, attention_mask=mask).end_scores,
        )
    assert again.score_config.normalizer == "ema" and again.do_normalize


def test_pku_missing_backbone_weights_is_an_error(tmp_path):
    _write_pku(tmp_path / "bad", shards=1)
    # drop a backbone tensor: loading must fail loudly, never silently re-initialise it
    from safetensors.torch import load_file

    path = tmp_path / "bad" / "model.safetensors"
    sd = load_file(path)
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="missing"):
        ScoreModel.from_pretrained(tmp_path / "bad")


def test_not_a_score_model_dir(tmp_path):
    from saferlhf.models.tiny import tiny_llama

    tiny_llama(vocab_size=VOCAB).save_pretrained(tmp_path / "lm")
    with pytest.raises(FileNotFoundError, match="from_backbone"):
        ScoreModel.from_pretrained(tmp_path / "lm")
