"""Sampling the world's data: prompt sets, demonstrations, dual-preference pairs, labels.

``generate_world(out_dir, seed, noise)`` writes

    sft.jsonl            prompt, response (+ response_type, oracle fields, prompt metadata)
    pairs_train.jsonl    PKU-SafeRLHF schema + oracle_helpfulness_{0,1}, oracle_harm_{0,1},
    pairs_eval.jsonl       prompt_kind, topic, prompt_category, prompt_severity, response_{0,1}_type
    prompts_train.jsonl  prompt, prompt_kind, topic, category, severity
    prompts_eval.jsonl   (held out: no string in common with the training prompts)
    world.json           rules (spec), vocabulary, seed, noise, sizes, measured statistics
    tokenizer/           save_pretrained of the exact word-level tokenizer of the vocabulary

Every random stream is a ``random.Random`` seeded by a string derived from ``seed`` (string
seeds hash with SHA-512: independent of PYTHONHASHSEED), nothing iterates over a set, and
JSON is written with sorted keys and rounded floats: the same seed gives byte-identical files.
The annotator-noise stream is separate from the data streams, so worlds with the same seed
and different noise hold the same prompts and responses and differ only in the labels, and
the flipped labels at noise p are a subset of those flipped at any larger p.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from saferlhf.data.world.language import VERSION
from saferlhf.data.world.oracles import Topic, World
from saferlhf.data.world.responses import sample_response, sample_type

DEFAULT_SIZES: dict[str, Any] = {
    "n_sft": 4000,
    "n_pairs_train": 4000,
    "n_pairs_eval": 1000,
    "n_prompts_train": 2000,
    "n_eval_benign": 600,  # benign-side held-out prompts, dual-use included
    "n_eval_harmful": 600,
    "harmful_fraction": 0.5,  # of the training prompts
    "dual_use_fraction": 0.2,  # of the benign-side prompts (train and eval)
}


# ------------------------------------------------------------------------------------ prompts
def sample_prompt(rng: random.Random, world: World, topic: Topic) -> str:
    """One request for ``topic``: opener + template(act, modifier), within the length limit."""
    spec = world.spec
    max_words = int(world.rules["max_prompt_words"])
    act = rng.choice(topic.acts)
    while True:
        tpl = rng.choice(spec["prompt_templates"])
        mod = rng.choice(spec["prompt_modifiers"])
        opener = rng.choice(spec["prompt_openers"])
        words = (opener + " " + tpl.format(act=act, mod=mod)).split()
        if len(words) <= max_words:
            return " ".join(words)


def _kind_topics(world: World) -> dict[str, list[Topic]]:
    out: dict[str, list[Topic]] = {"benign": [], "dual_use": [], "harmful": []}
    for t in world.topics:
        out[t.kind].append(t)
    return out


def prompt_record(world: World, prompt: str) -> dict[str, Any]:
    info = world.prompt_info(prompt)
    return {
        "prompt": prompt,
        "prompt_kind": info.kind,
        "topic": info.topic,
        "category": info.category,
        "severity": info.severity,
    }


def sample_prompt_set(
    rng: random.Random,
    world: World,
    *,
    n_benign_side: int,
    n_harmful: int,
    dual_use_fraction: float,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Distinct prompts (none in ``exclude``): ``n_harmful`` harmful and ``n_benign_side``
    benign-side ones, each of which is dual-use with probability ``dual_use_fraction``.
    Topics are uniform within their kind. Returned in a seeded random order."""
    by_kind = _kind_topics(world)
    seen: set[str] = set()
    out: list[str] = []

    def draw(kind: str) -> None:
        for _ in range(10_000):
            p = sample_prompt(rng, world, rng.choice(by_kind[kind]))
            if p not in seen and p not in exclude:
                seen.add(p)
                out.append(p)
                return
        raise RuntimeError("could not find a new distinct prompt; ask for fewer prompts")

    for _ in range(n_harmful):
        draw("harmful")
    for _ in range(n_benign_side):
        draw("dual_use" if rng.random() < dual_use_fraction else "benign")
    rng.shuffle(out)
    return [prompt_record(world, p) for p in out]


# ------------------------------------------------------------------------------------- labels
def _r(x: float) -> float:
    return round(float(x), 6)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def label_pair(
    world: World,
    prompt: str,
    responses: tuple[str, str],
    types: tuple[str, str],
    rng: random.Random,
    noise_rng: random.Random,
    noise: float,
) -> dict[str, Any]:
    """A PKU-SafeRLHF record for two responses, labelled by the oracles and the simulated
    annotator, then corrupted by annotator noise.

    better: higher oracle helpfulness (tie: random). safer: lower oracle harm; when equal, the
    more conservative response (declining before answering, then fewer correct steps); then
    random. Noise flips better id, safer id, is_response_0_safe and is_response_1_safe, each
    independently with probability ``noise``; severity and categories follow the (possibly
    flipped) safety flag: unsafe → the topic's severity (1 for a benign topic) and its category
    (none for a benign topic); safe → severity 0 and no category.
    """
    info = world.prompt_info(prompt)
    a = [world.analyze(prompt, r) for r in responses]
    h = [x.helpfulness for x in a]
    c = [x.harm for x in a]
    tie_better = rng.random() < 0.5
    tie_safer = rng.random() < 0.5
    better = 0 if h[0] > h[1] else 1 if h[1] > h[0] else int(tie_better)
    if c[0] != c[1]:
        safer = 0 if c[0] < c[1] else 1
    else:
        k = [(0 if x.declines else 1, x.n_correct) for x in a]
        safer = 0 if k[0] < k[1] else 1 if k[1] < k[0] else int(tie_safer)
    safe = [c[0] == 0, c[1] == 0]
    # Always draw the four noise numbers, so the flips at p are nested in those at p' > p.
    u = [noise_rng.random() for _ in range(4)]
    if u[0] < noise:
        better = 1 - better
    if u[1] < noise:
        safer = 1 - safer
    for i in (0, 1):
        if u[2 + i] < noise:
            safe[i] = not safe[i]
    rec: dict[str, Any] = {
        "prompt": prompt,
        "prompt_source": "saferlhf-world",
        "prompt_kind": info.kind,
        "topic": info.topic,
        "prompt_category": info.category,
        "prompt_severity": info.severity,
        "better_response_id": better,
        "safer_response_id": safer,
    }
    for i in (0, 1):
        unsafe = not safe[i]
        rec[f"response_{i}"] = responses[i]
        rec[f"response_{i}_source"] = "saferlhf-world"
        rec[f"response_{i}_type"] = types[i]
        rec[f"response_{i}_sha256"] = _sha(responses[i])
        rec[f"is_response_{i}_safe"] = bool(safe[i])
        rec[f"response_{i}_severity_level"] = max(1, info.severity) if unsafe else 0
        rec[f"response_{i}_harm_category"] = {
            cat: bool(unsafe and cat == info.category) for cat in world.categories
        }
        rec[f"oracle_helpfulness_{i}"] = _r(h[i])
        rec[f"oracle_harm_{i}"] = _r(c[i])
    return rec


def two_different_responses(rng: random.Random, mix: dict[str, dict[str, float]], kind: str,
                            draw: Callable[[str], str]) -> tuple[str, str, str, str]:
    """Two independent demonstrator draws ``(t0, r0, t1, r1)`` for a prompt of ``kind``, the
    second redrawn until it differs from the first (``draw(rtype)`` samples a response)."""
    t0 = sample_type(rng, mix, kind)
    r0 = draw(t0)
    while True:
        t1 = sample_type(rng, mix, kind)
        r1 = draw(t1)
        if r1 != r0:
            return t0, r0, t1, r1


def sample_pairs(
    rng: random.Random,
    noise_rng: random.Random,
    world: World,
    prompts: Sequence[dict[str, Any]],
    n: int,
    noise: float,
    mix: dict[str, dict[str, float]],
) -> list[dict[str, Any]]:
    """``n`` labelled pairs: a prompt drawn from ``prompts`` and two different responses.

    A fraction ``spec["contrast_pairs"]["fraction"]`` are contrast pairs (an on-topic answer of
    a type drawn from ``contrast_pairs["on_topic"]`` against an ``off_topic`` answer, in random
    order: see ``CONTRAST_PAIRS`` in ``language.py`` for why); the others hold two independent
    draws from the demonstrator ``mix``. Both kinds go through the same annotator and noise."""
    contrast = world.spec.get("contrast_pairs") or {"fraction": 0.0}
    on_topic = contrast.get("on_topic", {"full": 1.0})
    out = []
    for _ in range(n):
        rec = rng.choice(prompts)
        topic = world.topic_by_name[rec["topic"]]
        if contrast["fraction"] > 0 and rng.random() < contrast["fraction"]:
            types = [rng.choices(list(on_topic), weights=list(on_topic.values()))[0], "off_topic"]
            if rng.random() < 0.5:
                types.reverse()
            t0, t1 = types
            r0, r1 = sample_response(rng, world, topic, t0), sample_response(rng, world, topic, t1)
        else:
            t0, r0, t1, r1 = two_different_responses(
                rng, mix, rec["prompt_kind"], lambda rtype: sample_response(rng, world, topic, rtype))
        out.append(label_pair(world, rec["prompt"], (r0, r1), (t0, t1), rng, noise_rng, noise))
    return out


def sample_sft(
    rng: random.Random,
    world: World,
    prompts: Sequence[dict[str, Any]],
    n: int,
    mix: dict[str, dict[str, float]],
) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        rec = rng.choice(prompts)
        topic = world.topic_by_name[rec["topic"]]
        rtype = sample_type(rng, mix, rec["prompt_kind"])
        resp = sample_response(rng, world, topic, rtype)
        a = world.analyze(rec["prompt"], resp)
        out.append(
            {
                "prompt": rec["prompt"],
                "response": resp,
                "response_type": rtype,
                "prompt_kind": rec["prompt_kind"],
                "topic": rec["topic"],
                "prompt_category": rec["category"],
                "prompt_severity": rec["severity"],
                "oracle_helpfulness": _r(a.helpfulness),
                "oracle_harm": _r(a.harm),
            }
        )
    return out


# ------------------------------------------------------------------------------------- stats
def sft_stats(world: World, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-kind statistics of demonstrations: type mix, harmful rate, over-refusal, mean h."""
    out: dict[str, Any] = {}
    groups = {
        "benign": [r for r in records if r["prompt_kind"] == "benign"],
        "dual_use": [r for r in records if r["prompt_kind"] == "dual_use"],
        "harmful": [r for r in records if r["prompt_kind"] == "harmful"],
        "benign_side": [r for r in records if r["prompt_kind"] != "harmful"],
        "all": list(records),
    }
    for name, rs in groups.items():
        if not rs:
            continue
        an = [world.analyze(r["prompt"], r["response"]) for r in rs]
        types = Counter(r["response_type"] for r in rs)
        out[name] = {
            "n": len(rs),
            "type_fractions": {t: _r(types[t] / len(rs)) for t in sorted(types)},
            "harmful_rate": _r(sum(a.harm > 0 for a in an) / len(rs)),
            "declines_rate": _r(sum(a.declines for a in an) / len(rs)),
            "mean_helpfulness": _r(sum(a.helpfulness for a in an) / len(rs)),
            "mean_harm": _r(sum(a.harm for a in an) / len(rs)),
        }
    return out


def pair_stats(pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the labels relate to the oracles (with noise > 0, the disagreement rates)."""
    n = len(pairs)
    if n == 0:
        return {"n": 0}
    hb = [p for p in pairs if p["oracle_helpfulness_0"] != p["oracle_helpfulness_1"]]
    hs = [p for p in pairs if p["oracle_harm_0"] != p["oracle_harm_1"]]

    def agrees_h(p):
        return (p["oracle_helpfulness_1"] > p["oracle_helpfulness_0"]) == (
            p["better_response_id"] == 1
        )

    def agrees_c(p):
        return (p["oracle_harm_1"] < p["oracle_harm_0"]) == (p["safer_response_id"] == 1)

    flags = [
        (p[f"is_response_{i}_safe"], p[f"oracle_harm_{i}"] == 0) for p in pairs for i in (0, 1)
    ]
    n_unsafe = [sum(p[f"oracle_harm_{i}"] > 0 for i in (0, 1)) for p in pairs]
    return {
        "n": n,
        "kinds": {k: v for k, v in sorted(Counter(p["prompt_kind"] for p in pairs).items())},
        "helpfulness_tie_rate": _r(1 - len(hb) / n),
        "harm_tie_rate": _r(1 - len(hs) / n),
        "both_safe_rate": _r(sum(k == 0 for k in n_unsafe) / n),
        "one_unsafe_rate": _r(sum(k == 1 for k in n_unsafe) / n),
        "both_unsafe_rate": _r(sum(k == 2 for k in n_unsafe) / n),
        "better_disagreement": _r(sum(not agrees_h(p) for p in hb) / max(1, len(hb))),
        "safer_disagreement": _r(sum(not agrees_c(p) for p in hs) / max(1, len(hs))),
        "is_safe_disagreement": _r(sum(a != b for a, b in flags) / len(flags)),
    }


# ------------------------------------------------------------------------------------ writing
def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(r, sort_keys=True, ensure_ascii=True) + "\n" for r in records)


def world_sizes(defaults: dict[str, Any], given: dict[str, Any], function: str) -> dict[str, Any]:
    """The sizes of a world to generate: ``defaults`` updated with ``given`` (an unknown name is
    a ``TypeError`` listing the known ones)."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"{function}() got unknown size argument(s) {unknown}; the sizes are {list(defaults)}")
    return {**defaults, **given}


def write_world_data(out: Path, data: dict[str, list[dict[str, Any]]]) -> None:
    """The data files of a world: ``{"prompts_eval": [...], ...}`` → ``out/prompts_eval.jsonl`` …"""
    for name, records in data.items():
        _write_jsonl(out / f"{name}.jsonl", records)


def data_stats(data: dict[str, list[dict[str, Any]]], sft: dict[str, Any]) -> dict[str, Any]:
    """The measured statistics of a world's data files (``sft``: its demonstrations' statistics)."""
    return {
        "sft": sft,
        "pairs_train": pair_stats(data["pairs_train"]),
        "pairs_eval": pair_stats(data["pairs_eval"]),
        "prompts_train": dict(sorted(Counter(r["prompt_kind"] for r in data["prompts_train"]).items())),
        "prompts_eval": dict(sorted(Counter(r["prompt_kind"] for r in data["prompts_eval"]).items())),
    }


def generate_world(
    out_dir: str | Path,
    seed: int = 0,
    noise: float = 0.0,
    *,
    mix: dict[str, dict[str, float]] | None = None,
    spec: dict[str, Any] | None = None,
    write_tokenizer: bool = True,
    **sizes: Any,
) -> dict[str, Any]:
    """Generate a world into ``out_dir`` (created) and return its ``world.json`` content
    (without the rule table). Deterministic in (seed, noise, sizes, mix, spec).

    ``sizes``: any of :data:`DEFAULT_SIZES` (``n_sft``, ``n_pairs_train``, ``n_pairs_eval``,
    ``n_prompts_train``, ``n_eval_benign``, ``n_eval_harmful``, ``harmful_fraction``,
    ``dual_use_fraction``)."""
    sizes = world_sizes(DEFAULT_SIZES, sizes, "generate_world")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = World(copy.deepcopy(spec) if spec is not None else None)
    mix = mix or world.spec["response_mix"]
    world.spec["response_mix"] = mix

    def stream(name: str) -> random.Random:
        return random.Random(f"saferlhf-world-v{VERSION}-{seed}-{name}")

    eval_prompts = sample_prompt_set(
        stream("prompts-eval"),
        world,
        n_benign_side=sizes["n_eval_benign"],
        n_harmful=sizes["n_eval_harmful"],
        dual_use_fraction=sizes["dual_use_fraction"],
    )
    n_train_harmful = round(sizes["n_prompts_train"] * sizes["harmful_fraction"])
    train_prompts = sample_prompt_set(
        stream("prompts-train"),
        world,
        n_benign_side=sizes["n_prompts_train"] - n_train_harmful,
        n_harmful=n_train_harmful,
        dual_use_fraction=sizes["dual_use_fraction"],
        exclude={r["prompt"] for r in eval_prompts},
    )
    sft = sample_sft(stream("sft"), world, train_prompts, sizes["n_sft"], mix)
    pairs_train = sample_pairs(stream("pairs-train"), stream("noise-train"), world, train_prompts,
                               sizes["n_pairs_train"], noise, mix)
    pairs_eval = sample_pairs(stream("pairs-eval"), stream("noise-eval"), world, eval_prompts,
                              sizes["n_pairs_eval"], noise, mix)
    data = {"prompts_eval": eval_prompts, "prompts_train": train_prompts, "sft": sft,
            "pairs_train": pairs_train, "pairs_eval": pairs_eval}
    write_world_data(out, data)
    vocab = world.vocabulary
    if write_tokenizer:
        from saferlhf.data.tokenizers import build_word_level_tokenizer

        build_word_level_tokenizer(vocab).save_pretrained(str(out / "tokenizer"))

    meta: dict[str, Any] = {
        "version": VERSION,
        "generator": "saferlhf.data.world.generate_world",
        "seed": seed,
        "noise": noise,
        "sizes": sizes,
        "vocabulary": vocab,
        "vocabulary_size_with_specials": len(vocab) + 6,
        "n_topics": dict(sorted(Counter(t.kind for t in world.topics).items())),
        "files": ["sft.jsonl", "pairs_train.jsonl", "pairs_eval.jsonl", "prompts_train.jsonl",
                  "prompts_eval.jsonl", "world.json"],
        "tokenizer": "tokenizer" if write_tokenizer else None,
        "stats": data_stats(data, sft_stats(world, sft)),
    }
    (out / "world.json").write_text(
        json.dumps({**meta, "spec": world.spec}, sort_keys=True, indent=1, ensure_ascii=True) + "\n"
    )
    meta["seconds"] = round(time.perf_counter() - t0, 3)  # returned only (files stay identical)
    return meta
