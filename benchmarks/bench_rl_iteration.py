"""Cost of one RL iteration: PPO-Lag against PPO on the same policy, batch and lengths.

Both algorithms run in this one process on the same tiny Llama-style policy with learned
reward and cost models (``ScoreModel``s on the same backbone shape) and the same prompts,
rollout batch, response length and PPO settings. PPO-Lag adds a second critic and the cost
model's forward pass, so the goal is ``time(ppo_lag) / time(ppo) <= 1.3`` per iteration.

For each phase (generate / score / train) it reports the median wall time over the timed
iterations (the two algorithms alternate iteration by iteration, so load on a shared machine
hits both alike) and the peak memory allocated above the phase's starting point (glibc
``mallinfo2`` sampled every 0.5 ms by a background thread on CPU;
``torch.cuda.max_memory_allocated`` on CUDA). It also prints the parameters each
algorithm holds (policy, reference, critics, scorers).

    python benchmarks/bench_rl_iteration.py [--batch 64] [--new-tokens 32] [--iters 5] [--threads 1]

PPO runs without a cost model (as it would in practice; the trainer would otherwise load
one just to log the cost). The models are untrained, so rows end at random; both algorithms
sample the same prompts with the same seeds from the same weights, so the response lengths
of the timed iterations match (printed).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


class PeakHeap:
    """Peak of the bytes malloc has handed out and not got back (glibc ``mallinfo2``:
    ``uordblks + hblkhd``, i.e. live heap and mmapped chunks — torch's CPU tensors come from
    malloc), sampled every ``interval`` seconds by a background thread. Unlike RSS it falls
    when memory is freed, so each phase's peak is measured from its own starting point.
    ``start()`` resets, ``stop()`` returns the peak above the start in MiB."""

    def __init__(self, interval: float = 0.0005) -> None:
        self.libc = ctypes.CDLL("libc.so.6")
        self.libc.mallinfo2.restype = _MallInfo2
        self.interval = interval
        self._peak = self._base = 0
        self._on = threading.Event()
        self._quit = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def in_use(self) -> int:
        m = self.libc.mallinfo2()
        return m.uordblks + m.hblkhd

    def _run(self) -> None:
        while not self._quit:
            if self._on.is_set():
                self._peak = max(self._peak, self.in_use())
            time.sleep(self.interval)

    def start(self) -> None:
        self._base = self.in_use()
        self._peak = self._base
        self._on.set()

    def stop(self) -> float:
        self._peak = max(self._peak, self.in_use())
        self._on.clear()
        return (self._peak - self._base) / 2**20

    def close(self) -> None:
        self._quit = True


class PhaseMemory:
    """Peak memory per phase: CUDA allocator stats on GPU, the malloc heap on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.sampler = None if self.cuda else PeakHeap()
        self._base = 0

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self.sampler.start()

    def stop(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self._base) / 2**20
        return self.sampler.stop()


def build_assets(root: Path, layers: int, hidden: int, vocab_words: int) -> dict[str, Path]:
    """A word-level tokenizer, a tiny policy and reward / cost models on the same shape."""
    from saferlhf.models.score_model import ScoreModel
    from saferlhf.models.tiny import build_word_level_tokenizer, tiny_llama

    words = [f"w{i}" for i in range(vocab_words)]
    tok = build_word_level_tokenizer(words)
    policy = tiny_llama(tok, hidden_size=hidden, num_layers=layers, num_heads=4,
                        max_position_embeddings=256, seed=0)
    paths = {"policy": root / "policy", "reward": root / "reward", "cost": root / "cost"}
    policy.save_pretrained(paths["policy"])
    tok.save_pretrained(paths["policy"])
    for i, name in enumerate(("reward", "cost")):
        sm = ScoreModel.from_backbone(tiny_llama(tok, hidden_size=hidden, num_layers=layers, num_heads=4,
                                                 max_position_embeddings=256, seed=i + 1),
                                      score_type=name, dtype=None)
        sm.save_pretrained(paths[name], tokenizer=tok)
    g = torch.Generator().manual_seed(0)
    with (root / "prompts.jsonl").open("w") as fh:
        for _ in range(512):
            n = int(torch.randint(4, 15, (1,), generator=g))
            ids = torch.randint(0, vocab_words, (n,), generator=g).tolist()
            fh.write(json.dumps({"prompt": " ".join(words[i] for i in ids)}) + "\n")
    paths["prompts"] = root / "prompts.jsonl"
    return paths


def count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


class Runner:
    """One algorithm's trainer plus per-phase timers and memory probes."""

    def __init__(self, algo: str, paths: dict[str, Path], args, out: Path, mem: PhaseMemory,
                 critic_mode: str = "separate") -> None:
        from saferlhf.config.stages import RLConfig
        from saferlhf.trainers.rl import SafeRLTrainer

        cfg = RLConfig(algo=algo, policy=str(paths["policy"]), reward_model=str(paths["reward"]),
                       cost_model=str(paths["cost"]) if algo != "ppo" else None, prompts=str(paths["prompts"]),
                       out=str(out / f"{algo}_{critic_mode}"), rollout_batch_size=args.batch,
                       mini_batch_size=args.mini_batch, ppo_epochs=args.ppo_epochs, max_new_tokens=args.new_tokens,
                       iterations=10**6, precision="fp32", progress=False, seed=0, critic_mode=critic_mode)
        self.algo = algo if critic_mode == "separate" else f"{algo} ({critic_mode} critic)"
        self.tr = SafeRLTrainer(cfg)
        self.mem = mem
        self.times: dict[str, list[float]] = {"generate": [], "score": [], "train": [], "iteration": []}
        self.peaks: dict[str, list[float]] = {"generate": [], "score": [], "train": []}
        self.lengths: list[float] = []
        rollout = self.tr._rollout

        def probed_rollout(*a, **k):
            self.mem.start()
            res = rollout(*a, **k)
            self.peaks["generate"].append(self.mem.stop())
            self.mem.start()  # the score phase starts when the rollout returns
            return res

        self.tr._rollout = probed_rollout

    def iteration(self, record: bool) -> None:
        tr = self.tr
        batch, t, stats = tr.make_experience(tr.state.step)
        self.peaks["score"].append(self.mem.stop())
        self.mem.start()
        t0 = time.perf_counter()
        tr.ppo_update(batch, t)
        train_s = time.perf_counter() - t0
        self.peaks["train"].append(self.mem.stop())
        tr.state.step += 1
        if not record:
            for v in self.peaks.values():
                v.clear()
            return
        self.times["generate"].append(stats["time/generate"])
        self.times["score"].append(stats["time/score"])
        self.times["train"].append(train_s)
        self.times["iteration"].append(stats["time/generate"] + stats["time/score"] + train_s)
        self.lengths.append(stats["response_length"])

    def result(self) -> dict:
        tr = self.tr
        params = {
            "policy": count(tr.policy),
            "reference_extra": tr.reference.extra_parameter_count(),
            "critics": sum(count(c) for c in tr.critics.values()),
            "scorers": count(getattr(tr.reward_scorer, "model", None))
            + count(getattr(tr.cost_scorer, "model", None)),
        }
        return {
            "algo": self.algo,
            "time_s": {k: statistics.median(v) for k, v in self.times.items()},
            "peak_mib": {k: max(v) for k, v in self.peaks.items()},
            "mean_response_length": statistics.mean(self.lengths),
            "params": params,
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64, help="prompts per rollout batch")
    ap.add_argument("--mini-batch", type=int, default=32)
    ap.add_argument("--ppo-epochs", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=500)
    ap.add_argument("--iters", type=int, default=6,
                    help="timed iterations per algorithm (after 1 warm-up), interleaved ppo / ppo_lag")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    import warnings

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        paths = build_assets(root, args.layers, args.hidden, args.vocab)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        mem = PhaseMemory(device)
        runners = [Runner("ppo", paths, args, root / "runs", mem), Runner("ppo_lag", paths, args, root / "runs", mem),
                   Runner("ppo_lag", paths, args, root / "runs", mem, critic_mode="shared")]
        for r in runners:  # warm-up (first calls allocate, build kernels, fill caches)
            r.iteration(record=False)
        # Alternate the runs so that a noisy (shared) machine slows them alike.
        for _ in range(args.iters):
            for r in runners:
                r.iteration(record=True)
        results = [r.result() for r in runners]
    ppo = results[0]
    print(f"policy: llama {args.layers} layers, hidden {args.hidden}, vocab {args.vocab + 6}; "
          f"rollout batch {args.batch}, max new tokens {args.new_tokens}, mini-batch {args.mini_batch}, "
          f"ppo_epochs {args.ppo_epochs}; threads {torch.get_num_threads()}; {args.iters} timed iterations")
    print("mean response length: " + ", ".join(f"{r['algo']} {r['mean_response_length']:.1f}" for r in results))
    for lag in results[1:]:
        print(f"\n{'phase':<10} {'ppo s':>8} {lag['algo'] + ' s':>28} {'ratio':>6}   {'ppo MiB':>8} {'MiB':>8}")
        for ph in ("generate", "score", "train", "iteration"):
            a, b = ppo["time_s"][ph], lag["time_s"][ph]
            ma, mb = ppo["peak_mib"].get(ph), lag["peak_mib"].get(ph)
            mem = f"{ma:8.1f} {mb:8.1f}" if ma is not None else ""
            print(f"{ph:<10} {a:8.3f} {b:28.3f} {b / a:6.2f}   {mem}")
    print("\nparameters held: " + "; ".join(
        f"{r['algo']}: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in r["params"].items()) for r in results))
    ratios = {r["algo"]: r["time_s"]["iteration"] / ppo["time_s"]["iteration"] for r in results[1:]}
    for name, ratio in ratios.items():
        print(f"{name} / ppo time per iteration: {ratio:.2f} (goal <= 1.3)")
    ratio = ratios
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
