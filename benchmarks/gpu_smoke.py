"""GPU smoke run: SFT, reward and cost models, 5 PPO-Lag iterations with 256-token responses
(bf16) on a ~0.4 B Qwen2-style model built from a config (random weights: nothing can be
downloaded on the GPU machine), plus generation and training throughput probes with the HF
backend and, when installed, vLLM. Writes ``gpu_smoke.json`` after every phase and prints each
phase's figures as it finishes.

    python benchmarks/gpu_smoke.py --out runs/gpu_smoke            # one GPU, < 8 minutes on an H200
    python benchmarks/gpu_smoke.py --out /tmp/smoke --tiny          # CPU check of the driver (tests)

Figures per phase: wall time, tokens/s, peak GPU memory (``torch.cuda.max_memory_allocated``
per device), and for training phases the MFU, ``6 · N · tokens/s / peak bf16 FLOP/s`` (dense
H200/H100 bf16: 989 TFLOP/s; ``--peak-tflops`` overrides). The generation probe samples
exactly ``rows × 256`` tokens with each engine (EOS ignored) so the speed-up is like for like.

The model: Qwen2.5-0.5B's layer stack (896 hidden, 24 layers, 14 heads, 2 KV heads, 4864 MLP)
with the world tokenizer's small vocabulary, so ~0.36 B parameters (the 0.5 B model's
136 M-parameter embedding is what the small vocabulary removes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

RESULTS: dict[str, Any] = {}


def log(msg: str) -> None:
    print(f"[gpu_smoke {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def save(out: Path) -> None:
    tmp = out / ".gpu_smoke.json.tmp"
    tmp.write_text(json.dumps(RESULTS, indent=2, default=str))
    os.replace(tmp, out / "gpu_smoke.json")


def peak_memory() -> dict[str, float]:
    if not torch.cuda.is_available():
        return {}
    return {f"cuda:{i}": round(torch.cuda.max_memory_allocated(i) / 2**30, 2) for i in range(torch.cuda.device_count())}


def reset_peak() -> None:
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def phase(out: Path, name: str, fn, **extra) -> dict[str, Any]:
    """Run ``fn() -> dict`` timing it and recording peak memory; failures are recorded, not raised."""
    log(f"{name} ...")
    reset_peak()
    t0 = time.perf_counter()
    try:
        rec = dict(fn() or {})
        rec["ok"] = True
    except Exception as e:  # noqa: BLE001 - a smoke run records what broke and goes on
        rec = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    sync()
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    rec["peak_memory_gib"] = peak_memory()
    rec.update(extra)
    if rec.get("tokens") and rec["ok"]:
        rec["tokens_per_s"] = round(rec["tokens"] / rec.get("timed_seconds", rec["seconds"]), 1)
    RESULTS.setdefault("phases", {})[name] = rec
    save(out)
    log(f"{name}: " + json.dumps(rec, default=str))
    return rec


def build_model(path: Path, tokenizer_dir: Path, *, tiny: bool) -> int:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    dims = (dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128) if tiny else
            dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 intermediate_size=4864))
    cfg = Qwen2Config(vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **dims)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def mean_tokens(path: Path, tokenizer_dir: Path, fields: tuple[str, ...]) -> float:
    """Mean tokens of prompt + response over the records (template tokens not counted)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    lens = []
    for line in path.read_text().splitlines()[:512]:
        r = json.loads(line)
        for f in fields:
            lens.append(len(tok(r["prompt"] + " " + r[f])["input_ids"]))
    return sum(lens) / max(1, len(lens))


def with_mfu(rec: dict[str, Any], n_params: int, peak_flops: float) -> dict[str, Any]:
    if rec.get("ok") and rec.get("tokens_per_s"):
        rec["mfu"] = round(6 * n_params * rec["tokens_per_s"] / peak_flops, 4)
    return rec


def train_probe(model_dir: Path, *, batch: int, seq: int, steps: int, device: str, n_params: int,
                peak_flops: float) -> dict[str, Any]:
    """Forward + backward + AdamW steps of the policy in bf16 autocast: tokens/s and MFU."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=device)
    dtype = torch.bfloat16
    for i in range(steps + 1):
        if i == 1:
            sync()
            t0 = time.perf_counter()
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    dt = time.perf_counter() - t0
    tokens = batch * seq * steps
    tps = tokens / dt
    # gradient checkpointing recomputes the forward: 8·N FLOPs per token are executed; MFU counts 6·N
    return {"tokens": tokens, "timed_seconds": round(dt, 3), "mfu": round(6 * n_params * tps / peak_flops, 4),
            "batch": batch, "seq": seq}


def hf_generate_probe(model_dir: Path, *, rows: int, prompt_len: int, new_tokens: int, device: str) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device).eval()
    ids = torch.randint(5, model.config.vocab_size, (rows, prompt_len), device=device)
    with torch.inference_mode():
        model.generate(input_ids=ids[:, :8], max_new_tokens=4, do_sample=True)  # warm-up
        sync()
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
        sync()
    dt = time.perf_counter() - t0
    return {"tokens": int((out.shape[1] - prompt_len) * rows), "timed_seconds": round(dt, 3), "rows": rows}


def vllm_generate_probe(model_dir: Path, *, rows: int, prompt_len: int, new_tokens: int) -> dict[str, Any]:
    from saferlhf.rollout import SamplingParams
    from saferlhf.rollout.vllm import VLLMRolloutBackend, check_vllm_available, vllm_sampling_kwargs

    check_vllm_available()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import SamplingParams as VSP

    tok = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to("cuda")
    backend = VLLMRolloutBackend(policy, tok, model_path=str(model_dir), gpu_memory_utilization=0.4)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(5, policy.config.vocab_size, (rows, prompt_len), generator=g).tolist()
    kw = vllm_sampling_kwargs(SamplingParams(temperature=1.0, max_new_tokens=new_tokens), eos_token_ids=[],
                              n=1, seed=0)
    kw.update(ignore_eos=True, min_tokens=new_tokens, stop_token_ids=None)
    backend.engine.generate([{"prompt_token_ids": p[:8]} for p in prompts[:2]], VSP(max_tokens=4), use_tqdm=False)
    t0 = time.perf_counter()
    outs = backend.engine.generate([{"prompt_token_ids": p} for p in prompts], VSP(**kw), use_tqdm=False)
    dt = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for o in outs for c in o.outputs)
    t1 = time.perf_counter()
    backend.sync_weights(policy)  # full-weight sync from the training model
    sync_s = time.perf_counter() - t1
    batch = backend.generate(prompts[:4], sampling=SamplingParams(max_new_tokens=16))
    batch.validate()
    backend.close()
    return {"tokens": tokens, "timed_seconds": round(dt, 3), "rows": rows, "weight_sync_seconds": round(sync_s, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/gpu_smoke")
    ap.add_argument("--tiny", action="store_true", help="tiny model, few steps, CPU allowed (checks the driver)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s of one GPU")
    ap.add_argument("--skip-vllm", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from saferlhf.cli import main as cli

    gpu = torch.cuda.is_available()
    if not gpu and not args.tiny:
        log("no CUDA GPU: run with --tiny to check the driver on CPU")
        return 2
    device = "cuda" if gpu else "cpu"
    t_start = time.perf_counter()
    RESULTS.update({"device": torch.cuda.get_device_name(0) if gpu else "cpu", "tiny": args.tiny,
                    "torch": torch.__version__, "gpus": torch.cuda.device_count() if gpu else 0})
    import transformers

    RESULTS["transformers"] = transformers.__version__
    t = args.tiny
    sizes = dict(n_sft=64 if t else 4000, n_pairs=64 if t else 4000, prompts=16 if t else 512,
                 sft_steps=2 if t else 60, rm_steps=2 if t else 40, rl_iters=1 if t else 5,
                 new_tokens=8 if t else 256, rollout=4 if t else 64, mini=4 if t else 16, batch=8 if t else 32,
                 probe_batch=2 if t else 8, probe_seq=32 if t else 1024, probe_steps=1 if t else 5,
                 gen_rows=2 if t else 64, gen_prompt=8 if t else 128)
    RESULTS["sizes"] = sizes
    world = out / "world"
    precision = "bf16" if gpu else "fp32"

    phase(out, "world", lambda: {"rc": cli(["world", "generate", "--out", str(world), "--n-sft", str(sizes["n_sft"]),
                                             "--n-pairs-train", str(sizes["n_pairs"]), "--n-pairs-eval", "16",
                                             "--n-prompts-train", str(sizes["prompts"]), "--n-eval-benign", "8",
                                             "--n-eval-harmful", "8"])})
    base = out / "base"
    n_params = build_model(base, world / "tokenizer", tiny=t)
    peak = args.peak_tflops * 1e12
    RESULTS["model"] = {"params": n_params, "arch": "qwen2", "path": str(base)}
    log(f"model: {n_params / 1e6:.1f} M parameters")
    save(out)

    def stage(argv_: list[str]) -> dict[str, Any]:
        rc = cli(argv_)
        if rc:
            raise RuntimeError(f"saferlhf {argv_[0]} exited {rc}")
        return {"rc": rc}

    sft = out / "sft"
    sft_tokens = sizes["sft_steps"] * sizes["batch"] * mean_tokens(world / "sft.jsonl", world / "tokenizer",
                                                                   ("response",))
    pair_tokens = sizes["rm_steps"] * (sizes["batch"] // 2) * 2 * mean_tokens(
        world / "pairs_train.jsonl", world / "tokenizer", ("response_0", "response_1"))
    rec = phase(out, "sft", lambda: {**stage(["sft", "--model", str(base), "--tokenizer", str(world / "tokenizer"),
                                     "--data", str(world / "sft.jsonl"), "--out", str(sft), "--max-steps",
                                     str(sizes["sft_steps"]), "--batch-size", str(sizes["batch"]), "--lr", "1e-4",
                                     "--precision", precision, "--gradient-checkpointing", "--progress", "false"]),
                                     "tokens": sft_tokens, "tokens_note": "approx: steps x batch x mean length"})
    with_mfu(rec, n_params, peak)
    for kind in ("reward-model", "cost-model"):
        rec = phase(out, kind, lambda kind=kind: {**stage([
            kind, "--model", str(sft), "--data", str(world / "pairs_train.jsonl"), "--out", str(out / kind),
            "--max-steps", str(sizes["rm_steps"]), "--batch-size", str(sizes["batch"] // 2), "--lr", "1e-5",
            "--precision", precision, "--gradient-checkpointing", "--progress", "false"]),
            "tokens": pair_tokens, "tokens_note": "approx: steps x pairs x 2 x mean length"})
        with_mfu(rec, n_params, peak)
    save(out)

    def rl(backend: str) -> dict[str, Any]:
        rl_out = out / f"rl_{backend}"
        stage(["rl", "--algo", "ppo_lag", "--policy", str(sft), "--reward-model", str(out / "reward-model"),
               "--cost-model", str(out / "cost-model"), "--prompts", str(world / "prompts_train.jsonl"),
               "--out", str(rl_out), "--iterations", str(sizes["rl_iters"]), "--rollout-batch-size",
               str(sizes["rollout"]), "--mini-batch-size", str(sizes["mini"]), "--max-new-tokens",
               str(sizes["new_tokens"]), "--precision", precision, "--gradient-checkpointing", "--backend", backend,
               "--progress", "false", "--log-every", "1"])
        recs = [json.loads(x) for x in (rl_out / "metrics.jsonl").read_text().splitlines()]
        recs = [r for r in recs if "response_length" in r]
        gen_tokens = sum(r["response_length"] * sizes["rollout"] for r in recs)
        return {"iterations": len(recs), "mean_response_length": gen_tokens / max(1, len(recs) * sizes["rollout"]),
                "tokens": gen_tokens, "lambda": recs[-1].get("lambda") if recs else None}

    phase(out, "ppo_lag_hf", lambda: rl("hf"))
    phase(out, "train_probe", lambda: train_probe(sft, batch=sizes["probe_batch"], seq=sizes["probe_seq"],
                                                  steps=sizes["probe_steps"], device=device, n_params=n_params,
                                                  peak_flops=peak))
    hf = phase(out, "generate_hf", lambda: hf_generate_probe(base, rows=sizes["gen_rows"], prompt_len=sizes["gen_prompt"],
                                                             new_tokens=sizes["new_tokens"], device=device))
    if not args.skip_vllm:
        vl = phase(out, "generate_vllm", lambda: vllm_generate_probe(base, rows=sizes["gen_rows"],
                                                                     prompt_len=sizes["gen_prompt"],
                                                                     new_tokens=sizes["new_tokens"]))
        if vl.get("ok") and hf.get("ok"):
            RESULTS["vllm_generate_speedup"] = round(vl["tokens_per_s"] / hf["tokens_per_s"], 2)
        phase(out, "ppo_lag_vllm", lambda: rl("vllm"))
    RESULTS["total_seconds"] = round(time.perf_counter() - t_start, 1)
    save(out)
    log(f"done in {RESULTS['total_seconds']} s: {out / 'gpu_smoke.json'}")
    failed = [k for k, v in RESULTS.get("phases", {}).items()
              if not v.get("ok") and k not in {"generate_vllm", "ppo_lag_vllm"}]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
