"""The LLM judge: verdict parsing, both orders, a tiny local judge scored by label log-probs, an
OpenAI-compatible endpoint (a stub ``http.server`` on 127.0.0.1 started here) inside ``eval
arena``, and the errors of an endpoint that refuses, times out or answers garbage."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import eval_toy as T
import pytest
import torch

from saferlhf import cli
from saferlhf.eval.judge import (
    EndpointJudge,
    JudgeError,
    LocalJudge,
    Query,
    judge_both_orders,
    judge_messages,
    parse_verdict,
    summarize_judgements,
)

HARMFUL_WORDS = {"bomb", "steal", "poison", "hurt"}


def test_parse_verdict():
    cases = {"A": "A", "B": "B", "tie": "tie", "Tie.": "tie", " b\n": "B", "**A**": "A", "[[B]]": "B",
             "Answer: A": "A", "Final verdict: [[tie]]": "tie", "Response B is more helpful.": "B",
             "A, because it is longer": "A", "'B'": "B", "(A)": "A", "": None, None: None,
             "Both are equally good": None, "I cannot decide": None, "Absolutely A": None, "Before I answer": None}
    for text, want in cases.items():
        assert parse_verdict(text) == want, text


def test_judge_messages_name_the_dimension_and_both_responses():
    m = judge_messages("harmlessness", "how ?", "first answer", "second answer")
    assert [x["role"] for x in m] == ["system", "user"]
    assert "[Response A]\nfirst answer" in m[1]["content"] and "[Response B]\nsecond answer" in m[1]["content"]
    assert "more harmless" in m[1]["content"] and "more helpful" not in m[1]["content"]
    assert "more helpful" in judge_messages("helpfulness", "how ?", "x", "y")[1]["content"]
    with pytest.raises(ValueError):
        judge_messages("honesty", "how ?", "x", "y")


class _Scripted:
    """A judge answering by a rule on (first, second)."""

    name, kind = "scripted", "test"

    def __init__(self, rule):
        self.rule, self.seen = rule, []

    def judge(self, queries, *, progress=False):
        self.seen.extend(queries)
        return [{"verdict": self.rule(q.first, q.second)} for q in queries]


def test_both_orders_cancel_position_bias():
    prompts, a, b = ["p0", "p1", "p2", "p3"], ["safe x", "x", "safe", "y"], ["y", "safe y", "safe", "z"]
    first = _Scripted(lambda f, s: "A")  # always picks the response shown first
    rows = judge_both_orders(first, "helpfulness", prompts, a, b)
    assert [(q.first, q.second) for q in first.seen] == list(zip(a, b)) + list(zip(b, a))  # both orders
    assert all(r["a_first"] == "a" and r["b_first"] == "b" and not r["consistent"] and r["winner"] == "tie"
               for r in rows)
    s = summarize_judgements(rows, [0, 1, 2, 3], n_boot=0)
    assert s["tie"] == 1.0 and s["order_disagreement_rate"] == 1.0 and s["first_position_rate"] == 1.0
    assert s["invalid_rate"] == 0.0

    def prefers_safe(f, s):
        return "tie" if ("safe" in f) == ("safe" in s) else "A" if "safe" in f else "B"

    rows = judge_both_orders(_Scripted(prefers_safe), "harmlessness", prompts, a, b)
    assert [r["winner"] for r in rows] == ["a", "b", "tie", "tie"] and all(r["consistent"] for r in rows)
    s = summarize_judgements(rows, [0, 1, 2, 3], n_boot=0)
    assert (s["win"], s["tie"], s["loss"]) == (0.25, 0.5, 0.25) and s["order_disagreement_rate"] == 0.0
    assert s["first_position_rate"] == 0.5  # decisive verdicts: the first shown won half the time

    rows = judge_both_orders(_Scripted(lambda f, s: None if f == "x" else "B"), "helpfulness", prompts, a, b)
    s = summarize_judgements(rows, [0, 1, 2, 3], n_boot=0)
    assert s["invalid_rate"] == pytest.approx(1 / 8) and s["tie"] == 1.0


# ----------------------------------------------------------------------------- local judge
@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    return T.policy(tmp_path_factory.mktemp("judge") / "judge", T.tokenizer(), seed=11, logit_scale=5.0)


def test_local_judge_picks_the_label_with_the_highest_logprob(judge_dir):
    from saferlhf.data.templates import encode_prompt

    judge = LocalJudge(str(judge_dir), device="cpu", batch_size=3)
    assert judge.single_token
    queries = [Query("helpfulness", "how do i make bread ?", "first mix then bake", "sorry cannot help"),
               Query("harmlessness", "how do i make a bomb ?", "first mix poison", "sorry cannot help with that"),
               Query("helpfulness", [{"role": "user", "content": "why ?"}], "yes", "no"),
               Query("harmlessness", "what ?", "", "here is safe recipe")]
    answers = judge.judge(queries)
    model = judge.model
    for q, ans in zip(queries, answers, strict=True):
        ids = encode_prompt(judge.tokenizer, judge.template, judge_messages(q.dimension, q.prompt, q.first, q.second))
        with torch.no_grad():  # an unpadded forward pass of the prompt alone
            lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)
        want = {lab: float(lp[i[0]]) for lab, i in zip(("A", "B", "tie"), judge.label_ids, strict=True)}
        assert ans["logprobs"] == pytest.approx(want, abs=1e-3)
        assert ans["verdict"] == max(want, key=want.get)
    # the multi-token path (each label's tokens scored after the prompt) gives the same log-probs
    judge.single_token = False
    again = judge.judge(queries)
    for x, y in zip(answers, again, strict=True):
        assert x["logprobs"] == pytest.approx(y["logprobs"], abs=1e-3)


def test_local_judge_needs_distinct_answer_tokens(tmp_path):
    from saferlhf.models.tiny import build_word_level_tokenizer

    path = T.policy(tmp_path / "nolabels", build_word_level_tokenizer(["how", "do", "i"]))
    with pytest.raises(JudgeError, match="cannot tell the answers"):
        LocalJudge(str(path), device="cpu")


# ----------------------------------------------------------------------------- endpoint
def _responses(content: str) -> tuple[str, str]:
    m = re.search(r"\[Response A\]\n(.*?)\n\n\[Response B\]\n(.*?)\n\n", content, re.DOTALL)
    return m.group(1), m.group(2)


def _rule(dimension: str, first: str, second: str) -> str:
    """The stub's judgement: helpfulness = more words; harmlessness = fewer harmful words."""
    if dimension == "helpfulness":
        x, y = len(first.split()), len(second.split())
    else:
        x, y = -sum(w in HARMFUL_WORDS for w in first.split()), -sum(w in HARMFUL_WORDS for w in second.split())
    return "tie" if x == y else "A" if x > y else "B"


class _Stub(BaseHTTPRequestHandler):
    mode = "rule"  # rule | first | sleep | error | garbage
    requests: typing.ClassVar[list] = []

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (the time-out test)
            pass

    def do_GET(self):
        if self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [{"id": "stub-judge"}]}).encode())
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        mode = self.mode  # as when the request came (a test may switch it meanwhile)
        if mode == "sleep":
            time.sleep(1.5)
            return self._send(200, json.dumps({"choices": [{"message": {"content": "A"}}]}).encode())
        if mode == "error":
            return self._send(500, b'{"error": "boom"}')
        if mode == "garbage":
            return self._send(200, b"<html>not an api</html>", "text/html")
        content = body["messages"][-1]["content"]
        dim = "helpfulness" if "more helpful?" in content else "harmlessness"
        verdict = "A" if mode == "first" else _rule(dim, *_responses(content))
        self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    _Stub.mode, _Stub.requests = "rule", []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge_arena")
    tok = T.tokenizer()
    a = T.policy(root / "a", tok, seed=0)
    return {"a": a, "b": T.policy(root / "b", tok, seed=5, logit_scale=30.0),
            "rm": T.score_model(root / "rm", a, tok, "reward", seed=1),
            "prompts": T.write_jsonl(root / "prompts.jsonl", T.PROMPTS)}


def test_endpoint_judge_in_the_arena_both_orders(stub, toy, tmp_path):
    out = tmp_path / "arena"
    assert cli.main(["eval", "arena", "--policy-a", str(toy["a"]), "--policy-b", str(toy["b"]), "--prompts",
                     str(toy["prompts"]), "--reward-model", str(toy["rm"]), "--judge", stub, "--max-new-tokens", "6",
                     "--n-boot", "100", "--out", str(out), "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    rows = T.read_jsonl(out / "samples.jsonl")
    n = len(rows)
    assert len(_Stub.requests) == 2 * 2 * n  # both orders x both dimensions
    assert all(r["model"] == "stub-judge" and r["temperature"] == 0.0 for r in _Stub.requests)
    j = s["judge"]
    assert j["kind"] == "endpoint" and "stub-judge" in j["judge"]
    for dim in ("helpfulness", "harmlessness"):
        want = []
        for r in rows:
            v = _rule(dim, r["completion_a"], r["completion_b"])
            want.append({"A": "a", "B": "b", "tie": "tie"}[v])
            assert r[f"judge_{dim}"]["winner"] == want[-1]
        assert j[dim]["order_disagreement_rate"] == 0.0 and j[dim]["invalid_rate"] == 0.0
        assert j[dim]["counts"] == {"win": want.count("a"), "tie": want.count("tie"), "loss": want.count("b")}
    assert "LLM judge (endpoint" in (out / "report.md").read_text()


def test_position_biased_endpoint_gives_ties(stub):
    _Stub.mode = "first"
    judge = EndpointJudge(stub, timeout=5)
    rows = judge_both_orders(judge, "helpfulness", ["a ?", "b ?"], ["x", "y y"], ["z z", "w"])
    s = summarize_judgements(rows, [0, 1], n_boot=0)
    assert s["tie"] == 1.0 and s["order_disagreement_rate"] == 1.0 and s["first_position_rate"] == 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_endpoint_errors_name_the_url_and_the_fix(stub, toy, tmp_path, capsys):
    refused = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(JudgeError, match=re.escape(refused) + ".*start the server"):
        EndpointJudge(refused, model="m", timeout=2).ask([{"role": "user", "content": "hi"}])
    out = tmp_path / "never"
    t = time.perf_counter()
    assert cli.main(["eval", "arena", "--policy-a", str(toy["a"]), "--policy-b", str(toy["b"]), "--prompts",
                     str(toy["prompts"]), "--judge", refused, "--out", str(out), "--no-progress"]) == 2
    assert refused in capsys.readouterr().err and not out.exists()
    assert time.perf_counter() - t < 10  # checked before any generation

    assert cli.main(["eval", "arena", "--policy-a", str(toy["a"]), "--policy-b", str(toy["b"]), "--prompts",
                     str(toy["prompts"]), "--judge", str(tmp_path / "no_judge"), "--out", str(out),
                     "--no-progress"]) == 2
    assert "no_judge" in capsys.readouterr().err and not out.exists()

    _Stub.mode = "sleep"
    with pytest.raises(JudgeError, match=r"did not answer within 0.3 s.*--judge-timeout"):
        EndpointJudge(stub, model="m", timeout=0.3).ask([{"role": "user", "content": "hi"}])
    _Stub.mode = "error"
    with pytest.raises(JudgeError, match=r"HTTP 500"):
        EndpointJudge(stub, model="m", timeout=5, retries=0).ask([{"role": "user", "content": "hi"}])
    _Stub.mode = "garbage"
    with pytest.raises(JudgeError, match=r"not JSON"):
        EndpointJudge(stub, model="m", timeout=5).ask([{"role": "user", "content": "hi"}])
    with pytest.raises(JudgeError, match=r"HTTP 404"):
        EndpointJudge(stub.removesuffix("/v1") + "/wrong", timeout=5)  # /models of a wrong base URL
