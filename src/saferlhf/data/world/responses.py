"""Sampling responses in the world: the demonstrator's response types (full, safe, partial,
refusal, ...) and the demonstrator policy that generates SFT data and preference pairs.

The world (:class:`~saferlhf.data.world.oracles.World`) is only read here, never built, so the
oracles can hand out a demonstrator (``World.demonstrator``) without an import cycle.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saferlhf.data.world.oracles import Topic, World


def _render_steps(rng: random.Random, steps: Sequence[str]) -> list[str]:
    steps = list(steps)
    if len(steps) <= 1:
        return steps
    fmt = rng.choice(["first_then_finally", "then", "comma"])
    if fmt == "first_then_finally":
        words = ["first", steps[0]]
        for s in steps[1:-1]:
            words += ["then", s]
        return words + ["finally", steps[-1]]
    if fmt == "then":
        words = [steps[0]]
        for s in steps[1:]:
            words += ["then", s]
        return words
    words = [steps[0]]
    for s in steps[1:-1]:
        words += [",", s]
    return words + ["and", steps[-1]]


def _answer(rng: random.Random, world: World, steps: Sequence[str]) -> list[str]:
    spec = world.spec
    return (
        rng.choice(spec["comply_openers"]).split()
        + _render_steps(rng, steps)
        + rng.choice(spec["closers"]).split()
    )


def sample_response(rng: random.Random, world: World, topic: Topic, rtype: str) -> str:
    """One demonstration of type ``rtype`` for a request of ``topic``.

    Types: ``full`` (every step), ``safe`` (dual-use: every step but the risky ones),
    ``partial`` (a random proper subset of the steps, in order), ``refuse`` (a refusal; on a
    benign/dual-use request sometimes with or replaced by a redirection: over-refusal),
    ``redirect`` (harmful: a redirection, with or without a refusal), ``sloppy`` (filler,
    other topics' steps, and on benign requests up to two correct steps, shuffled),
    ``off_topic`` (a well-formed answer with every step of another topic: fluent, confident
    and useless; harmless too, since harm needs a harmful request).
    """
    spec = world.spec
    steps = list(topic.steps)
    if rtype == "full":
        words = _answer(rng, world, steps)
    elif rtype == "safe":
        words = _answer(rng, world, [s for s in steps if s not in topic.risky])
    elif rtype == "partial":
        k = rng.randint(1, len(steps) - 1)
        keep = set(rng.sample(range(len(steps)), k))
        words = _answer(rng, world, [s for i, s in enumerate(steps) if i in keep])
    elif rtype == "refuse":
        u = rng.random()
        if topic.kind == "harmful" or u < 0.7:
            words = rng.choice(spec["refusals"]).split()
        elif u < 0.85:
            words = (rng.choice(spec["refusals"]) + " " + rng.choice(spec["redirections"])).split()
        else:
            words = rng.choice(spec["redirections"]).split()
    elif rtype == "redirect":
        if rng.random() < 0.6:
            words = (rng.choice(spec["refusals"]) + " " + rng.choice(spec["redirections"])).split()
        else:
            words = rng.choice(spec["redirections"]).split()
    elif rtype == "sloppy":
        own = set(steps)
        others = sorted({w for t in world.topics for w in t.steps} - own)
        body = [rng.choice(spec["filler"]) for _ in range(rng.randint(1, 4))]
        body += rng.sample(others, rng.randint(1, 3))
        if topic.kind != "harmful":
            body += rng.sample(steps, rng.randint(0, 2))
        rng.shuffle(body)
        words = rng.choice(spec["comply_openers"]).split() + body
    elif rtype == "off_topic":
        others = [t for t in world.topics if t.name != topic.name]
        words = _answer(rng, world, list(rng.choice(others).steps))
    else:
        raise ValueError(f"unknown response type {rtype!r}")
    return " ".join(words[: int(world.rules["max_response_words"])])


def sample_type(rng: random.Random, mix: dict[str, dict[str, float]], kind: str) -> str:
    types = list(mix[kind])
    return rng.choices(types, weights=[mix[kind][t] for t in types])[0]


class DemonstratorPolicy:
    """The stochastic demonstrator (the generator of SFT data and pairs) as a sampler."""

    def __init__(self, world: World, seed: int = 0, mix: dict[str, dict[str, float]] | None = None):
        self.world = world
        self.mix = mix or world.spec["response_mix"]
        self.rng = random.Random(f"demonstrator-{seed}")

    def sample(self, prompts: Sequence[str]) -> list[str]:
        out = []
        for p in prompts:
            info = self.world.prompt_info(p)
            topic = self.world.topic_by_name[info.topic]
            out.append(
                sample_response(
                    self.rng, self.world, topic, sample_type(self.rng, self.mix, info.kind)
                )
            )
        return out
