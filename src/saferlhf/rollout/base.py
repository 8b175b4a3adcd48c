"""The rollout interface: sampling parameters, the batch of token ids, the backend contract.

Token ids are kept end to end. A :class:`RolloutBatch` is the single source of truth for what
was sampled; decoded texts (``response_texts``) are for logging and for scorers whose tokenizer
differs from the policy's, never parsed back into ids.

Layout of a batch of ``B`` rows (``B = number of prompts × n``)::

    sequences       (B, P + R)   [pad … pad | prompt ids][response ids … EOS | pad … pad]
                                  └──── left-padded, P ───┘└──── right-padded, R ──────┘
    attention_mask  (B, P + R)   1 on real prompt tokens and real response tokens, else 0
    response_mask   (B, R)       1 on real response tokens *including* the EOS token, 0 after
    response_lengths (B,)        number of real response tokens (>= 1)
    ended_with_eos  (B,)         True when the response ends with an EOS token; a response cut
                                 at ``max_new_tokens`` has none (its last real token is the
                                 last generated one)
    prompt_index    (B,)         which input prompt the row came from; with ``n`` samples per
                                 prompt the rows of a prompt are consecutive: 0,0,…,1,1,…

``P`` (``prompt_length``) is the same for every row because prompts are left-padded: the first
response token of every row sits at column ``P``. The last real response token of row ``i``
(where terminal reward/cost is read) is at column ``P + response_lengths[i] − 1``
(:meth:`RolloutBatch.last_token_index`).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample responses.

    temperature: 0 means greedy decoding; otherwise logits are divided by it before sampling.
    top_p: nucleus sampling (1.0 = off). top_k: 0 or None = off (note: HF ``generate`` would
    default to 50 when unset; backends must pass "off" explicitly).
    repetition_penalty: 1.0 = off. n: samples per prompt.

    These shape the *sampling* distribution only. Log-probs used for ratios, KL and entropy
    are always recomputed from ``logits / temperature`` of a plain forward pass
    (:func:`saferlhf.models.policy.forward_logprobs`); top-p/top-k/repetition penalty are not
    part of them.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    max_new_tokens: int = 32
    repetition_penalty: float = 1.0
    n: int = 1

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 or None, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class RolloutBatch:
    """Sampled responses as token ids (see the module docstring for the layout)."""

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    prompt_length: int
    response_mask: torch.Tensor
    response_lengths: torch.Tensor
    ended_with_eos: torch.Tensor
    prompt_index: torch.Tensor
    response_texts: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    image_inputs: Any = None
    """Vision-language rollouts: the :class:`saferlhf.models.tiny_vlm.ImageInputs` of the rows
    (row i holds the images of its prompt), kept aligned by :meth:`select` and :meth:`to`."""

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return int(self.sequences.shape[0])

    @property
    def batch_size(self) -> int:
        return len(self)

    @property
    def response_length(self) -> int:
        """R, the width of the response part (the longest response in the batch)."""
        return int(self.sequences.shape[1]) - self.prompt_length

    @property
    def prompt_ids(self) -> torch.Tensor:
        """(B, P) left-padded prompt ids."""
        return self.sequences[:, : self.prompt_length]

    @property
    def prompt_mask(self) -> torch.Tensor:
        """(B, P) 1 on real prompt tokens."""
        return self.attention_mask[:, : self.prompt_length]

    @property
    def responses(self) -> torch.Tensor:
        """(B, R) right-padded response ids (EOS included, padding after it)."""
        return self.sequences[:, self.prompt_length :]

    @property
    def device(self) -> torch.device:
        return self.sequences.device

    def last_token_index(self) -> torch.Tensor:
        """(B,) column in ``sequences`` of each row's last real response token (EOS or the last
        token of a truncated response): where terminal reward and cost are read."""
        return self.prompt_length + self.response_lengths - 1

    def response_token_ids(self, i: int) -> list[int]:
        """The real response ids of row ``i`` (EOS included when present)."""
        return self.responses[i, : int(self.response_lengths[i])].tolist()

    def prompt_token_ids(self, i: int) -> list[int]:
        """The real (unpadded) prompt ids of row ``i``."""
        row = self.prompt_ids[i]
        return row[self.prompt_mask[i].bool()].tolist()

    # ------------------------------------------------------------- transforms
    def to(self, device: torch.device | str) -> RolloutBatch:
        kw = {
            f.name: (
                getattr(self, f.name).to(device)
                if isinstance(getattr(self, f.name), torch.Tensor)
                or (f.name == "image_inputs" and getattr(self, f.name) is not None)
                else getattr(self, f.name)
            )
            for f in fields(self)
        }
        return RolloutBatch(**kw)

    def select(self, index: torch.Tensor | Sequence[int]) -> RolloutBatch:
        """Rows ``index`` (e.g. a PPO mini-batch). The column layout (and P) is unchanged."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.sequences.device)
        texts = (
            None
            if self.response_texts is None
            else [self.response_texts[int(i)] for i in idx.tolist()]
        )
        return replace(
            self,
            sequences=self.sequences[idx],
            attention_mask=self.attention_mask[idx],
            response_mask=self.response_mask[idx],
            response_lengths=self.response_lengths[idx],
            ended_with_eos=self.ended_with_eos[idx],
            prompt_index=self.prompt_index[idx],
            response_texts=texts,
            meta=dict(self.meta),
            image_inputs=None if self.image_inputs is None else self.image_inputs.select(idx.tolist()),
        )

    def validate(self) -> None:
        """Check the layout invariants; raises ``ValueError`` naming the broken one."""
        B, L = self.sequences.shape
        P, R = self.prompt_length, L - self.prompt_length
        if R < 1:
            raise ValueError(f"no response columns (sequence width {L}, prompt_length {P})")
        for name, t, shape in (
            ("attention_mask", self.attention_mask, (B, L)),
            ("response_mask", self.response_mask, (B, R)),
            ("response_lengths", self.response_lengths, (B,)),
            ("ended_with_eos", self.ended_with_eos, (B,)),
            ("prompt_index", self.prompt_index, (B,)),
        ):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
        if self.response_texts is not None and len(self.response_texts) != B:
            raise ValueError(f"{len(self.response_texts)} response_texts for {B} rows")
        if self.image_inputs is not None and len(self.image_inputs.images_per_row) != B:
            raise ValueError(f"image_inputs has {len(self.image_inputs.images_per_row)} rows for {B} rows")
        if not torch.equal(self.attention_mask[:, P:].long(), self.response_mask.long()):
            raise ValueError("attention_mask over the response columns differs from response_mask")
        cols = torch.arange(R, device=self.response_mask.device)
        expected = (cols[None, :] < self.response_lengths[:, None]).long()
        if not torch.equal(self.response_mask.long(), expected):
            raise ValueError(
                "response_mask is not a right-padded prefix of length response_lengths"
            )
        if (self.response_lengths < 1).any():
            raise ValueError("every response must have at least one token")
        pm = self.prompt_mask.long()
        if P > 0 and ((pm[:, 1:] - pm[:, :-1]) < 0).any():
            raise ValueError("prompt part is not left-padded (a 0 follows a 1 in the prompt mask)")


def _first_given(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


class RolloutBackend(abc.ABC):
    """Generates responses for prompts given as token ids.

    ``generate`` must not change the model's train/eval mode as seen by the caller and must not
    record gradients. ``sync_weights`` pushes the current policy weights into the backend (a
    no-op for in-process HF generation, where the backend samples from the live module).
    """

    sampling: SamplingParams
    tokenizer: Any = None
    decode: bool = True
    backend_name: str = "?"

    def _init_common(self, model: Any, tokenizer: Any, *, sampling: SamplingParams | None, decode: bool,
                     unwrap: Any, eos_token_id: int | Sequence[int] | None, pad_token_id: int | None,
                     generation_config: Any = None) -> None:
        """The attributes every backend has. Explicit token ids win, then the tokenizer's, then
        the model's generation config; the pad id falls back to the first EOS."""
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingParams()
        self.decode = decode
        self.unwrap = unwrap
        eos = _first_given(eos_token_id, getattr(tokenizer, "eos_token_id", None),
                           getattr(generation_config, "eos_token_id", None))
        if eos is None:
            raise ValueError("no EOS token id: pass eos_token_id= or a tokenizer that has one")
        self.eos_token_ids: list[int] = [int(eos)] if isinstance(eos, int) else [int(e) for e in eos]
        self.pad_token_id = int(_first_given(pad_token_id, getattr(tokenizer, "pad_token_id", None),
                                             getattr(generation_config, "pad_token_id", None), self.eos_token_ids[0]))

    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        n: int | None = None,
        sampling: SamplingParams | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        image_inputs: Any = None,
    ) -> RolloutBatch:
        """Sample ``n`` responses for every prompt (``n`` defaults to ``sampling.n``; rows of a
        prompt are consecutive).

        ``seed`` makes the call reproducible without touching the global RNG stream;
        ``generator`` (a ``torch.Generator``) draws that seed, so successive calls with the same
        generator differ but a run replays exactly. ``image_inputs`` (vision-language policies):
        the prompts' images, one row per prompt (prompt ids then hold the expanded image tokens);
        the batch carries them per row."""
        sampling = sampling or self.sampling
        n = int(n if n is not None else sampling.n)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        prompts = [list(map(int, p)) for p in prompt_ids]
        if not prompts:
            raise ValueError("no prompts")
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
        if seed is None and generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        batch = self._sample(prompts, n=n, sampling=sampling, seed=seed, image_inputs=image_inputs)
        if self.decode and self.tokenizer is not None:
            batch.response_texts = self.tokenizer.batch_decode(
                [batch.response_token_ids(i) for i in range(len(batch))], skip_special_tokens=True
            )
        batch.meta.update({"backend": self.backend_name, "n": n, "seed": seed, "sampling": sampling})
        return batch

    @abc.abstractmethod
    def _sample(self, prompts: list[list[int]], *, n: int, sampling: SamplingParams, seed: int | None,
                image_inputs: Any) -> RolloutBatch:
        """The backend's sampling of checked prompts (``generate`` validates and decodes)."""

    def sync_weights(self, model: Any) -> None:
        """Make the backend sample from ``model``'s current weights."""

    def close(self) -> None:
        """Release resources (GPU memory of a separate engine, worker processes)."""


def _as_id_set(eos_token_ids: int | Sequence[int] | None) -> set[int]:
    if eos_token_ids is None:
        return set()
    if isinstance(eos_token_ids, int):
        return {eos_token_ids}
    return {int(e) for e in eos_token_ids}


def build_rollout_batch(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    eos_token_ids: int | Sequence[int] | None,
    prompt_index: Sequence[int] | torch.Tensor | None = None,
    response_texts: list[str] | None = None,
    device: torch.device | str | None = None,
) -> RolloutBatch:
    """Pack per-row prompt and generated ids into a :class:`RolloutBatch`.

    ``responses[i]`` is whatever the engine produced for row ``i`` (it may run past the first EOS,
    e.g. HF ``generate`` pads finished rows); everything after the first EOS is dropped and
    becomes padding. The EOS token itself is a real response token. A response without EOS is
    a truncated one (``ended_with_eos`` False): all its tokens are real. Every backend builds its
    batch here, so the layout is the same whichever engine sampled.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if len(prompts) == 0:
        raise ValueError("empty rollout: no rows")
    eos = _as_id_set(eos_token_ids)
    cut: list[list[int]] = []
    ended: list[bool] = []
    for i, r in enumerate(responses):
        r = [int(t) for t in r]
        if not r:
            raise ValueError(f"row {i}: empty response (every response has at least one token)")
        end = next((j for j, t in enumerate(r) if t in eos), None)
        if end is not None:
            r = r[: end + 1]
        cut.append(r)
        ended.append(end is not None)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"row {i}: empty prompt")
    B = len(prompts)
    P = max(len(p) for p in prompts)
    R = max(len(r) for r in cut)
    seq = torch.full((B, P + R), pad_token_id, dtype=torch.long)
    mask = torch.zeros((B, P + R), dtype=torch.long)
    lengths = torch.empty(B, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, cut, strict=True)):
        seq[i, P - len(p) : P] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, P - len(p) : P] = 1
        seq[i, P : P + len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, P : P + len(r)] = 1
        lengths[i] = len(r)
    if prompt_index is None:
        pidx = torch.arange(B, dtype=torch.long)
    else:
        pidx = torch.as_tensor(prompt_index, dtype=torch.long).cpu()
    batch = RolloutBatch(
        sequences=seq,
        attention_mask=mask,
        prompt_length=P,
        response_mask=mask[:, P:].clone(),
        response_lengths=lengths,
        ended_with_eos=torch.tensor(ended, dtype=torch.bool),
        prompt_index=pidx,
        response_texts=response_texts,
    )
    batch.validate()
    return batch.to(device) if device is not None else batch
