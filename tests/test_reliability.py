"""Every user-caused fault ends with exit code 2 and one message naming the culprit (no
traceback), before any work; nothing is left marked COMPLETE and no good output is lost.

Faults of models, tokenizers, output directories, numbers, data files and bad-record
fractions; the CLI's error boundary itself; ``guard``/``eval`` group help; ``data summary
--data-config``. Runs, resumes and checkpoints: ``test_reliability_resume.py``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from saferlhf.cli import main
from saferlhf.io import is_complete

TINY = ["--model", "tiny", "--tiny-hidden", "32", "--tiny-layers", "1", "--batch-size", "8",
        "--progress", "false", "--log-every", "1000"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    assert main(["world", "generate", "--out", str(out), "--seed", "3", "--n-sft", "64", "--n-pairs-train", "32",
                 "--n-pairs-eval", "8", "--n-prompts-train", "8", "--n-eval-benign", "4",
                 "--n-eval-harmful", "4"]) == 0
    return out


@pytest.fixture(scope="module")
def policy(world, tmp_path_factory) -> Path:
    """A tiny SFT policy (2 steps) to use as --model of the score-model stages."""
    out = tmp_path_factory.mktemp("sft") / "policy"
    assert main(_sft(world, out, "--max-steps", "2")) == 0
    return out


def _sft(world: Path, out: Path, *extra: str, data: Path | None = None) -> list[str]:
    return ["sft", "--data", str(data or world / "sft.jsonl"), "--tokenizer", str(world / "tokenizer"),
            "--out", str(out), *TINY, *extra]


def _rm(world: Path, model: str | Path, out: Path, *extra: str) -> list[str]:
    return ["reward-model", "--model", str(model), "--data", str(world / "pairs_train.jsonl"), "--out", str(out),
            "--batch-size", "8", "--max-steps", "1", "--progress", "false", *extra]


def _fails(capsys, argv: list[str], *culprits: str) -> str:
    """Run ``argv``: exit 2, one message naming every culprit, no traceback; return stderr."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    for c in culprits:
        assert c in err, (c, err)
    return err


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("flag,value,key", [
    ("--lr", "-1", "lr"), ("--epochs", "nan", "epochs"), ("--epochs", "0", "epochs"), ("--lr", "inf", "lr"),
    ("--lora-r", "-2", "lora_r"), ("--seed", "-1", "seed"), ("--max-steps", "0", "max_steps"),
    ("--max-steps", "-5", "max_steps"), ("--warmup-ratio", "1.5", "warmup_ratio"),
    ("--max-bad-fraction", "2", "max_bad_fraction"),
])
def test_invalid_numbers_name_the_key(world, tmp_path, capsys, flag, value, key):
    out = tmp_path / "out"
    _fails(capsys, _sft(world, out, flag, value), f"'{key}'")
    assert not out.exists()  # rejected before anything was written


def test_invalid_numbers_of_rl_and_nested_keys(tmp_path, capsys):
    base = ["rl", "--policy", "p", "--reward-model", "r", "--cost-model", "c", "--prompts", "x.jsonl",
            "--out", str(tmp_path / "o")]
    _fails(capsys, [*base, "--iterations", "0"], "'iterations'")
    _fails(capsys, [*base, "--lagrange.window", "0"], "'lagrange.window'")
    _fails(capsys, [*base, "--top-p", "1.5"], "'top_p'")


def test_help_shows_ranges(capsys):
    assert main(["sft", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--lr (alias --learning-rate) (float, > 0)" in out and "--seed (int, >= 0)" in out


# ----------------------------------------------------------------------------- models


def _broken_model(policy: Path, tmp: Path, kind: str) -> Path:
    d = tmp / kind
    shutil.copytree(policy, d, ignore=shutil.ignore_patterns("checkpoints", ".saferlhf*"))
    w = d / "model.safetensors"
    if kind == "truncated":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif kind == "garbage":
        w.write_bytes(os.urandom(4096))
    elif kind == "no_config":
        (d / "config.json").unlink()
    elif kind == "bad_config":
        (d / "config.json").write_text("{not json")
    elif kind == "unknown_type":
        (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                   "model_type": "no_such_arch"}))
    elif kind == "no_weights":
        w.unlink()
    elif kind == "not_a_model":
        shutil.rmtree(d)
        d.mkdir()
        (d / "notes.txt").write_text("hello")
    return d


@pytest.mark.parametrize("kind,words", [
    ("truncated", "truncated"), ("garbage", "not a safetensors file"), ("no_config", "no config.json"),
    ("bad_config", "not valid JSON"), ("unknown_type", "no_such_arch"), ("no_weights", "no weights"), ("not_a_model", "not a model folder"),
])
def test_broken_model_folder(world, policy, tmp_path, capsys, kind, words):
    model = _broken_model(policy, tmp_path, kind)
    out = tmp_path / "rm"
    _fails(capsys, _rm(world, model, out), "--model", str(model), words)
    assert not out.exists()  # the folder the run would have created is not left behind


def test_unknown_hub_id_and_missing_folder(world, tmp_path, capsys):
    _fails(capsys, _rm(world, "no-such-org/no-such-model", tmp_path / "a"), "no-such-org/no-such-model",
           "Hugging Face cache", "--online")
    _fails(capsys, _rm(world, tmp_path / "missing", tmp_path / "b"), "--model", "missing")


def _edit_tokenizer(world: Path, tmp: Path, kind: str) -> Path:
    d = tmp / f"tok_{kind}"
    shutil.copytree(world / "tokenizer", d)
    data = json.loads((d / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    if kind == "bigger":
        for i in range(16):
            vocab[f"extra_word_{i}"] = len(vocab)
    else:  # same size, two words exchanged: another vocabulary
        a, b = list(vocab)[20:22]
        vocab[a], vocab[b] = vocab[b], vocab[a]
    (d / "tokenizer.json").write_text(json.dumps(data))
    return d


@pytest.mark.parametrize("kind,words", [("bigger", "embedding rows"), ("swapped", "2 tokens differ")])
def test_tokenizer_that_does_not_fit_the_model(world, policy, tmp_path, capsys, kind, words):
    tok = _edit_tokenizer(world, tmp_path, kind)
    _fails(capsys, _rm(world, policy, tmp_path / "rm", "--tokenizer", str(tok)), "--tokenizer", str(tok), words)


def test_unloadable_tokenizer(world, tmp_path, capsys):
    empty = tmp_path / "empty_tok"
    empty.mkdir()
    _fails(capsys, _sft(world, tmp_path / "o").copy() + ["--tokenizer", str(empty)], "--tokenizer", str(empty))


# ----------------------------------------------------------------------------- output directory


def test_out_is_a_file_or_under_a_file(world, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("keep me")
    _fails(capsys, _sft(world, f, "--max-steps", "1"), str(f), "is a file")
    _fails(capsys, _sft(world, f / "sub", "--max-steps", "1"), str(f), "is a file")
    assert f.read_text() == "keep me"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes read-only folders")
def test_read_only_out(world, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        _fails(capsys, _sft(world, ro / "run", "--max-steps", "1"), "not writable")
    finally:
        ro.chmod(0o700)


def test_not_enough_free_space(world, policy, tmp_path, capsys, monkeypatch):
    import saferlhf.preflight as pf

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda p: usage._replace(free=1024))
    out = tmp_path / "rm"
    _fails(capsys, _rm(world, policy, out), "--out", "MiB free", "needs about")
    assert not (out / "model.safetensors").exists()


# ----------------------------------------------------------------------------- data


def test_bad_parquet_names_the_file(world, tmp_path, capsys):
    bad = tmp_path / "data.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    _fails(capsys, _sft(world, tmp_path / "o", "--max-steps", "1", data=bad), str(bad), "parquet")


def _mostly_bad(world: Path, tmp: Path, good: int = 4, bad: int = 35) -> Path:
    lines = (world / "sft.jsonl").read_text().splitlines()[:good]
    lines += ["{broken json" for _ in range(bad)]
    path = tmp / "mostly_bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_record_fraction_stops_before_training(world, tmp_path, capsys):
    data = _mostly_bad(world, tmp_path)
    out = tmp_path / "o"
    err = _fails(capsys, _sft(world, out, "--max-steps", "1", data=data), str(data), "35 of 39",
                 "--max-bad-fraction", "malformed_json", "line 5")
    assert "nothing was trained" in err
    assert not (out / "model.safetensors").exists() and not is_complete(out)
    assert not (out / "metrics.jsonl").exists()


def test_bad_record_fraction_raised_trains_and_reports_counts(world, tmp_path, capsys):
    data = _mostly_bad(world, tmp_path)
    out = tmp_path / "o"
    assert main(_sft(world, out, "--max-steps", "1", "--max-bad-fraction", "1", data=data)) == 0
    err = capsys.readouterr().err
    assert "loaded 4 of 39 records; skipped 35" in err
    assert is_complete(out)


def test_bom_and_crlf_read_correctly(world, tmp_path):
    from saferlhf.data import load_sft

    text = (world / "sft.jsonl").read_text()
    path = tmp_path / "bom_crlf.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    result = load_sft(str(path))
    n = len(text.splitlines())
    assert result.report.total == n and not result.report.skipped
    assert result.records[0].response == load_sft(str(world / "sft.jsonl")).records[0].response


def test_data_summary_data_config_and_yaml(world, tmp_path, capsys):
    yml = tmp_path / "s.yaml"
    yml.write_text(f"data: {world / 'pairs_train.jsonl'}\nlimit: 5\n")
    assert main(["data", "summary", "--config", str(yml)]) == 0
    assert main(["data", "summary", "--data", str(world / "pairs_train.jsonl"), "--data-config", "default",
                 "--limit", "3"]) == 0
    from saferlhf.config import from_dict
    from saferlhf.config.stages import DataSummaryConfig

    assert from_dict(DataSummaryConfig, {"data": "x", "config": "alpaca-7b"}).data_config == "alpaca-7b"
    capsys.readouterr()
    _fails(capsys, ["data", "summary", "--data", "x", "--config", str(tmp_path / "missing.yaml")], "missing.yaml")


# ----------------------------------------------------------------------------- the error boundary


@pytest.mark.parametrize("group,subs", [("guard", ["guard train", "guard moderate", "guard generate"]),
                                        ("eval", ["eval world", "eval score-model", "eval guard"])])
def test_group_help_lists_subcommands(capsys, group, subs):
    assert main([group, "--help"]) == 0
    out = capsys.readouterr().out
    for s in subs:
        assert s in out
    assert main([group]) == 2  # no subcommand: the list, on stderr


def _raising_runner(exc):
    def runner(cfg):
        raise exc
    return runner


@pytest.mark.parametrize("exc,words", [
    (PermissionError(errno.EACCES, "Permission denied", "/x/out/model.safetensors"), "/x/out/model.safetensors"),
    (OSError(errno.ENOSPC, "No space left on device", "/x/out/ckpt"), "no space left"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/x/data"), "/x/data"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/x/f/sub"), "/x/f/sub"),
    (OSError("m does not appear to have a file named config.json"), "config.json"),
])
def test_user_errors_exit_2_without_traceback(world, tmp_path, capsys, monkeypatch, exc, words):
    from saferlhf.trainers import sft

    monkeypatch.setattr(sft, "run_sft", _raising_runner(exc))
    _fails(capsys, _sft(world, tmp_path / "o", "--max-steps", "1"), words)
    # --debug adds the traceback, same exit code
    assert main(_sft(world, tmp_path / "o2", "--max-steps", "1", "--debug")) == 2
    assert "Traceback" in capsys.readouterr().err


def test_internal_bug_exits_1_with_traceback(world, tmp_path, capsys, monkeypatch):
    from saferlhf.trainers import sft

    monkeypatch.setattr(sft, "run_sft", _raising_runner(KeyError("oops")))
    assert main(_sft(world, tmp_path / "o", "--max-steps", "1")) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "bug" in err and "report" in err
    assert not (tmp_path / "o" / ".saferlhf.lock").exists()  # the lock is released on every exit


def test_contradictory_labels_are_noise_not_bad_lines():
    """A noisy labelling skips its contradictory pairs but never trips --max-bad-fraction; the
    same fraction of malformed lines does."""
    from saferlhf.data.validation import (
        CONTRADICTORY_LABELS,
        BadRecord,
        DataError,
        LoadReport,
        bad_record_limit,
        enforce_bad_fraction,
    )

    def report(reason):
        r = LoadReport(source="pairs.jsonl", format="pku_saferlhf")
        r.total = 10
        r.skipped = [BadRecord(f"pairs.jsonl:{i}", f"line {i}", reason, None, "bad", "fix") for i in range(3)]
        return r

    with bad_record_limit(0.1):
        enforce_bad_fraction(report(CONTRADICTORY_LABELS))
        with pytest.raises(DataError, match="3 of 10 records are bad"):
            enforce_bad_fraction(report("invalid_json"))
