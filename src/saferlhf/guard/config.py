"""Configs of the guard stages (``guard train|moderate|generate``, ``eval guard``).

Kept free of heavy imports (no torch) so ``saferlhf guard ... --help`` answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saferlhf.config import ConfigError, option
from saferlhf.config.stages import BadRecordPolicy, DataFormat, TrainConfig

GuardPreset = Literal["none", "prompt-moderation"]
Taxonomy = Literal["auto", "pku", "beavertails", "beavertails_v", "none"]

DEFAULT_REFUSAL = "I'm sorry, but I can't help with that."


@dataclass(kw_only=True)
class GuardTrainConfig(TrainConfig):
    """Train a guard: heads for unsafe / severity / harm categories on one backbone.

    With ``--preset`` the preset's values fill every option left at its default or null (an
    option you set to another value wins; ``freeze_*`` take an explicit 0 / false too).
    """

    data: str | None = option(None, help="labelled data: PKU-SafeRLHF / BeaverTails / BeaverTails-V / world "
                                          "pairs (each labelled response is an example) or single responses")
    preset: GuardPreset = option("none", help="prompt-moderation: fine-tune the packaged MiniLM encoder on "
                                              "HarmBench + StrongREJECT prompts vs templated benign requests")
    model: str = option("tiny", help="'tiny' (tiny Llama-style backbone from scratch, needs --tokenizer), 'minilm' "
                                     "(the packaged all-MiniLM-L6-v2 encoder) or a model dir (SFT policy, backbone)")
    tokenizer: str | None = option(None, help="tokenizer dir (default: the model's; required for 'tiny')")
    tiny_layers: int = option(2, ge=1, help="layers of the tiny backbone")
    tiny_hidden: int = option(128, ge=8, help="hidden size of the tiny backbone")
    vlm_style: Literal["llava", "qwen2_vl"] = option(
        "qwen2_vl", help="image data with --model tiny: the tiny VLM backbone (qwen2_vl: 8 px patches merged 2x2; "
                         "llava: CLIP tower, tiny_patch px patches)")
    vision_hidden: int = option(64, ge=8, help="image data with --model tiny: hidden size of the vision tower")
    vision_layers: int = option(2, ge=1, help="image data with --model tiny: layers of the vision tower")
    vision_patch: int = option(8, ge=1, help="image data with --model tiny: patch size (px) of the vision tower")
    ignore_images: bool = option(False, help="train a text-only guard on image data (the images are dropped; "
                                             "a baseline); otherwise image data needs a vision-language backbone")
    taxonomy: Taxonomy = option("auto", help="harm categories of the category head (auto: from the data's names)")
    moderation: Literal["auto", "input", "output"] = option(
        "auto", help="input: moderate prompts only (responses dropped); output: prompt + response; auto: as the data")
    pooling: Literal["auto", "last", "first", "mean"] = option(
        "auto", help="how the sequence is summarised (auto: mean for encoders, last token for decoders)")
    encoding: Literal["auto", "template", "pair"] = option(
        "auto", help="template: chat/plain template + response + EOS (decoders); pair: the tokenizer's own "
                     "[CLS] prompt [SEP] response [SEP] (encoders); auto picks by the tokenizer")
    calibration_fraction: float = option(0.1, help="held-out fraction (stratified) for temperature calibration")
    class_weighting: Literal["balanced", "none"] = option(
        "balanced", help="balanced: positive weight n_neg/n_pos for unsafe and each category, inverse-frequency "
                         "weights for the severity classes")
    unsafe_weight: float = option(1.0, ge=0, help="loss weight of the unsafe head")
    severity_weight: float = option(1.0, ge=0, help="loss weight of the severity head")
    category_weight: float = option(1.0, ge=0, help="loss weight of the category head")
    threshold: float = option(0.5, help="P(unsafe) at or above which a text is flagged")
    unsafe_bias: bool = option(
        True, help="give the unsafe head a bias; false makes `saferlhf export` of the unsafe logit exact on "
                   "RMSNorm backbones (Llama, Qwen2, SmolLM2), whose HF sequence-classification head has no bias")
    target_fpr: float | None = option(
        None, help="pick the threshold on the held-out split: the lowest with a false-positive rate <= this")
    freeze_embeddings: bool | None = option(
        None, help="keep the input embeddings fixed (null: the preset's choice, else no)")
    freeze_layers: int | None = option(
        None, ge=0, help="keep the lowest N transformer layers fixed (null: the preset's choice, else 0)")
    max_length: int = option(128, ge=4, help="maximum tokens of prompt (+ response)")
    batch_size: int = option(32, ge=1, help="examples per micro-batch")
    epochs: float = option(3.0, gt=0, help="passes over the training examples; max_steps wins when set")
    lr: float = option(1e-3, gt=0, help="peak learning rate (1e-3 suits tiny backbones, ~5e-5 pretrained ones)")
    limit: int | None = option(None, ge=0, help="use at most this many training examples (after the split)")

    def validate(self) -> None:
        super().validate()
        if self.data is None and self.preset == "none":
            raise ConfigError("guard train needs --data FILE or --preset prompt-moderation")
        if self.data is not None and self.preset != "none":
            raise ConfigError("give either --data or --preset, not both")
        if not 0.0 <= self.calibration_fraction < 0.9:
            raise ConfigError("calibration_fraction must be in [0, 0.9)")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError("threshold must be in (0, 1)")
        if self.target_fpr is not None and not 0.0 <= self.target_fpr < 1.0:
            raise ConfigError("target_fpr must be in [0, 1)")


@dataclass(kw_only=True)
class GuardModerateConfig:
    model: str = option(help="guard dir (written by `saferlhf guard train`)")
    input: str = option(help="JSONL: one object per line with 'prompt' [+ 'response'] [+ 'image']; "
                             "other fields are ignored")
    out: str = option(help="output JSONL: one verdict per input line, in order (safe, severity, categories, score)")
    batch_size: int = option(64, ge=1, help="texts per forward pass")
    threshold: float | None = option(None, help="override the guard's saved decision threshold")
    keep_fields: bool = option(False, help="copy the input fields into each output line (next to the verdict)")


@dataclass(kw_only=True)
class GuardGenerateConfig:
    policy: str = option(help="policy dir (save_pretrained causal LM)")
    guard: str = option(help="guard dir")
    prompts: str = option(help="prompts (jsonl/json/parquet with a 'prompt' field, or pairs)")
    out: str = option(help="output dir: responses.jsonl, summary.json")
    rounds: int = option(5, ge=0, help="regenerations at most per prompt before the refusal fallback")
    severity_threshold: int = option(
        1, help="regenerate when flagged unsafe with predicted severity >= this (1: every flagged response)")
    safety_instruction: str | None = option(
        None, help="text put before the prompt when regenerating (null: a plain fresh sample)")
    category_feedback: bool = option(False, help="name the flagged harm categories in the regeneration prompt")
    refusal: str = option(DEFAULT_REFUSAL, help="the fallback answer when every round is flagged")
    world: str | None = option(None, help="world dir: adds per-round oracle harm / helpfulness to the summary")
    reward_model: str | None = option(None, help="reward model dir: adds per-round mean reward (helpfulness)")
    temperature: float | None = option(None, gt=0, help="sampling temperature (default: the policy's own, else 1)")
    top_p: float = option(1.0, gt=0, le=1, help="nucleus sampling")
    max_new_tokens: int = option(32, ge=1, help="response length cap")
    batch_size: int = option(256, ge=1, help="prompts per generate call")
    limit: int | None = option(None, ge=0, help="use the first N prompts only")
    seed: int = option(0, ge=0, help="sampling seed (round k samples with seed + k)")

    def validate(self) -> None:
        if self.rounds < 0:
            raise ConfigError("rounds must be >= 0")
        if not 0 <= self.severity_threshold <= 3:
            raise ConfigError("severity_threshold must be in 0..3")


@dataclass(kw_only=True)
class EvalGuardConfig:
    model: str = option(help="guard dir")
    data: str = option(help="labelled data (any format load_guard_records reads)")
    out: str = option(help="output dir: summary.json, predictions.jsonl, reliability.png")
    data_format: DataFormat = option("auto", help="adapter used to read --data")
    on_bad_record: BadRecordPolicy = option("skip", help="bad records: skip with a report, or error")
    moderation: Literal["auto", "input", "output"] = option(
        "auto", help="input: score prompts only; output: prompt + response; auto: as the guard was trained")
    batch_size: int = option(64, ge=1, help="texts per forward pass")
    threshold: float | None = option(None, help="override the guard's saved decision threshold")
    n_bins: int = option(10, ge=1, help="bins of the reliability diagram")
    assume_label: Literal["none", "unsafe", "safe"] = option(
        "none", help="label of prompt-only records without a safe/is_safe field (e.g. unsafe for a harmful "
                     "prompt set: the flag rate is then the recall)")
    group_by: str | None = option("category", help="metadata key for per-group metrics (by_<key>), if present")
    oracle: bool = option(True, help="world data: also score against the oracle labels (oracle_* metrics)")
