"""The image + text guard: a tiny VLM guard trained on image-world pairs sees the harm in the
image (a text-only guard cannot: benign and harmful twins share their step words), the
moderation API and CLI take images, and unreadable images give errors naming the record."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from saferlhf import cli
from saferlhf.data import load_pairs
from saferlhf.data.multimodal import ImageLoadError
from saferlhf.data.views import guard_view
from saferlhf.data.world.image import generate_image_world
from saferlhf.eval.guard_eval import guard_logits, oracle_labels
from saferlhf.guard.model import Guard

# One twin pair (bread / poison share "mix heat stir pour filter"), glyphs at a fixed size.
WORLD = {"objects": ["bread", "poison"], "n_sft": 4, "n_pairs_train": 300, "n_pairs_eval": 100,
         "n_prompts_train": 300, "n_eval_benign": 40, "n_eval_harmful": 40,
         "render": {"radius": [0.38, 0.42], "distractors": [0, 0]}}
TRAIN = ["--model", "tiny", "--taxonomy", "pku", "--tiny-hidden", "64", "--tiny-layers", "1",
         "--vision-hidden", "32", "--vision-layers", "1", "--batch-size", "16", "--lr", "3e-3",
         "--max-length", "64", "--warmup-ratio", "0.05", "--calibration-fraction", "0.1", "--log-every", "1000000"]
STEPS = "200"  # ~10 s on one core; accuracy on answers with steps 0.92-0.94 over seeds 0-2


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("guard_img") / "w"
    generate_image_world(out, seed=3, noise=0.0, **WORLD)
    return out


def _train(world_dir: Path, out: Path, *extra: str) -> Path:
    args = ["guard", "train", "--data", str(world_dir / "pairs_train.jsonl"), "--out", str(out),
            "--tokenizer", str(world_dir / "tokenizer"), "--max-steps", STEPS, *TRAIN, *extra]
    assert cli.main(args) == 0
    return out


@pytest.fixture(scope="module")
def vlm_guard_dir(world_dir, tmp_path_factory) -> Path:
    return _train(world_dir, tmp_path_factory.mktemp("guard_img_vlm") / "g")


@pytest.fixture(scope="module")
def text_guard_dir(world_dir, tmp_path_factory) -> Path:
    return _train(world_dir, tmp_path_factory.mktemp("guard_img_text") / "g", "--ignore-images", "true")


def _held_out(world_dir: Path):
    recs = guard_view(load_pairs(world_dir / "pairs_eval.jsonl", keep_contradictory_labels=True).records)
    y = np.array([oracle_labels(r)[0] for r in recs])
    side = [0 if r.source.endswith("#a") else 1 for r in recs]
    steps = np.array([r.metadata[f"response_{s}_type"] not in ("refuse", "redirect") for r, s in zip(recs, side)])
    return recs, y, steps


def test_image_guard_sees_the_image(world_dir, vlm_guard_dir, text_guard_dir):
    assert (vlm_guard_dir / "vlm_processor.json").is_file()
    cfg = json.loads((vlm_guard_dir / "guard_config.json").read_text())
    assert cfg["vlm_style"] == "qwen2_vl" and cfg["backbone_class"] == "Qwen2VLModel"
    assert json.loads((text_guard_dir / "guard_config.json").read_text())["vlm_style"] is None
    recs, y, steps = _held_out(world_dir)
    assert steps.sum() >= 60 and 0.2 < y[steps].mean() < 0.8  # both labels among answers with steps
    majority = max(y[steps].mean(), 1 - y[steps].mean())
    vlm, text = Guard.load(vlm_guard_dir), Guard.load(text_guard_dir)
    assert vlm.multimodal and not text.multimodal
    acc = {}
    for name, guard in (("vlm", vlm), ("text", text)):
        flagged = guard_logits(guard, recs)["unsafe"] / guard.config.temperature > np.log(
            guard.threshold / (1 - guard.threshold))
        acc[name] = float((flagged == y)[steps].mean())
    # the same words are safe or unsafe depending on the image: text alone is no better than the majority
    assert acc["text"] < majority + 0.08, acc
    assert acc["vlm"] >= 0.8 and acc["vlm"] >= majority + 0.15 and acc["vlm"] >= acc["text"] + 0.15, (acc, majority)


def test_moderate_with_images(world_dir, vlm_guard_dir, text_guard_dir):
    from PIL import Image

    guard = Guard.load(vlm_guard_dir)
    pairs = load_pairs(world_dir / "pairs_eval.jsonl").records
    p = pairs[0]
    image = p.images[0]
    v = guard.moderate(p.prompt, p.response("a"), images=image)
    assert set(v) == {"safe", "severity", "categories", "score"} and 0 <= v["score"] <= 1
    assert v["safe"] == (v["score"] < guard.threshold) and (v["severity"] == 0) == v["safe"]
    # a path, a PIL image and a one-element list are the same input
    with Image.open(image) as im:
        pil = im.convert("RGB")
    assert guard.moderate(p.prompt, p.response("a"), images=[pil])["score"] == pytest.approx(v["score"], abs=1e-6)
    # batch scores equal one-by-one scores (sorting and padding inside)
    sub = pairs[:6]
    prompts, responses = [x.prompt for x in sub], [x.response("b") for x in sub]
    images = [x.images[0] for x in sub]
    scores = guard.score(prompts, responses, images)
    one = [guard.score([a], [b], [c])[0] for a, b, c in zip(prompts, responses, images)]
    assert np.allclose(scores, one, atol=1e-5)
    assert ((guard.cost(prompts, responses, images) > 0) == (scores >= guard.threshold)).all()
    # no image (prompt or prompt + response alone) still gives a verdict
    assert set(guard.moderate(p.prompt, p.response("a"))) == {"safe", "severity", "categories", "score"}
    with pytest.raises(ImageLoadError, match=r"row 0: image .*missing\.png does not exist"):
        guard.moderate(p.prompt, p.response("a"), images=str(world_dir / "missing.png"))
    with pytest.raises(NotImplementedError, match="text-only"):
        Guard.load(text_guard_dir).moderate(p.prompt, p.response("a"), images=image)


def test_moderate_cli_with_image_records(world_dir, vlm_guard_dir, tmp_path, capsys):
    pairs = load_pairs(world_dir / "pairs_eval.jsonl").records[:3]
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    rows = []
    for i, p in enumerate(pairs):
        shutil.copy(p.images[0], data / "imgs" / f"{i}.png")
        rows.append({"prompt": p.prompt, "response": p.response("a"), "image": f"imgs/{i}.png", "id": i})
    rows.append({"prompt": pairs[0].prompt})  # no image: input moderation of the text
    inp, out = data / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["guard", "moderate", "--model", str(vlm_guard_dir), "--input", str(inp), "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 4 and all(set(x) == {"safe", "severity", "categories", "score"} for x in lines)
    guard = Guard.load(vlm_guard_dir)
    expected = guard.score([p.prompt for p in pairs], [p.response("a") for p in pairs], [p.images[0] for p in pairs])
    assert [x["score"] for x in lines[:3]] == pytest.approx(expected, abs=1e-6)

    (data / "imgs" / "bad.png").write_bytes(b"not a png at all")
    long_prompt = " ".join([pairs[0].prompt] * 12)
    for image, msg, extra in [
            ("imgs/none.png", r"in2\.jsonl:2: image .*imgs/none\.png does not exist", {}),
            ("imgs/bad.png", r"in2\.jsonl:2: image .*imgs/bad\.png cannot be read", {}),
            ("imgs/0.png", r"in2\.jsonl:2: the prompt is \d+ tokens .*longer than max_length=64", {"prompt": long_prompt})]:
        bad_in, bad_out = data / "in2.jsonl", tmp_path / "out2.jsonl"
        bad_in.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "image": image, **extra}) + "\n")
        capsys.readouterr()
        assert cli.main(["guard", "moderate", "--model", str(vlm_guard_dir), "--input", str(bad_in),
                         "--out", str(bad_out)]) == 2
        err = capsys.readouterr().err
        assert re.search(msg, err) and "Traceback" not in err, err
        assert not bad_out.exists()


def test_eval_guard_on_image_pairs(world_dir, vlm_guard_dir, text_guard_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    assert cli.main(["eval", "guard", "--model", str(vlm_guard_dir), "--data", str(world_dir / "pairs_eval.jsonl"),
                     "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["images_used"] and s["n"] == s["n_with_images"] == 200 and "oracle_f1" in s
    assert s["oracle_severity"]["n"] == 200
    assert cli.main(["eval", "guard", "--model", str(text_guard_dir), "--data", str(world_dir / "pairs_eval.jsonl"),
                     "--out", str(tmp_path / "ev_text")]) == 0
    t = json.loads((tmp_path / "ev_text" / "summary.json").read_text())
    assert not t["images_used"] and s["oracle_f1"] > t["oracle_f1"]
    # image data with a text-only backbone needs an explicit --ignore-images
    capsys.readouterr()
    assert cli.main(["guard", "train", "--data", str(world_dir / "pairs_train.jsonl"), "--out", str(tmp_path / "g"),
                     "--model", str(text_guard_dir), "--max-steps", "1"]) == 2
    assert "text-only" in capsys.readouterr().err
