"""run_jobs: independent stages in worker processes — results in job order, per-job seconds,
progress from metrics.jsonl, and errors that keep their type and name the failing stage."""

import json
import time

import pytest

from saferlhf.config import ConfigError
from saferlhf.jobs import Job, run_jobs


def write_steps(path: str, n: int, value: int) -> int:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"step": i + 1}) + "\n")
            fh.flush()
            time.sleep(0.01)
    print("worker output goes to the job's log")
    return value * 10


def fail_with_config_error(key: str) -> None:
    raise ConfigError(f"unknown key {key!r}")


@pytest.mark.parametrize("workers", [1, 2])
def test_results_in_job_order(tmp_path, workers):
    jobs = [Job(f"j{i}", write_steps, dict(path=str(tmp_path / f"m{i}.jsonl"), n=5, value=i), total=5,
                metrics=tmp_path / f"m{i}.jsonl") for i in range(3)]
    done = run_jobs(jobs, workers=workers, progress=False, log_dir=tmp_path / "logs")
    assert list(done) == ["j0", "j1", "j2"]
    assert [r.value for r in done.values()] == [0, 10, 20]
    assert all(r.seconds > 0 for r in done.values())
    for i in range(3):
        assert len((tmp_path / f"m{i}.jsonl").read_text().splitlines()) == 5
    if workers > 1:  # console output of a worker lands in its log, not on our console
        assert "worker output" in (tmp_path / "logs" / "j1.log").read_text()


def test_worker_error_keeps_its_type_and_names_the_stage(tmp_path):
    jobs = [Job("ok", write_steps, dict(path=str(tmp_path / "m.jsonl"), n=1, value=1)),
            Job("bad_stage", fail_with_config_error, dict(key="lr_typo"))]
    with pytest.raises(ConfigError, match=r"stage 'bad_stage' failed .*unknown key 'lr_typo'"):
        run_jobs(jobs, workers=2, progress=False, log_dir=tmp_path / "logs")


def test_duplicate_names_rejected():
    with pytest.raises(ValueError, match="unique"):
        run_jobs([Job("a", print), Job("a", print)], workers=1)
