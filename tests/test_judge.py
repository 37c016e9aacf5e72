"""AI feedback: both-order judging, position bias and self-consistency on judges whose answers are known,
the local log-prob judge against a hand computation, and the HTTP judge against a stub server on 127.0.0.1."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignkit.cli import main
from alignkit.errors import AlignkitError
from alignkit.feedback import judge as J

CONSTITUTION = "Be helpful.\n\n- Prefer correct answers.\n- Prefer concise answers.\n1. Refuse harm."
ITEMS = [(f"question {i}", f"good answer {i}", f"poor answer {i}") for i in range(6)]


class ScriptedJudge:
    """P(slot A is better) = `if_good_first` when the good answer sits in slot A, else `if_good_second`."""

    name = "scripted"

    def __init__(self, if_good_first: float, if_good_second: float):
        self.if_good_first, self.if_good_second = if_good_first, if_good_second

    def first_slot_probs(self, conversations):
        probs = []
        for messages in conversations:
            a = messages[-1]["content"].split("[Response A]")[1].split("[Response B]")[0]
            probs.append(self.if_good_first if "good" in a else self.if_good_second)
        return probs, [1.0] * len(probs)

    def generate(self, conversations, max_new_tokens=128):
        out = []
        for messages in conversations:
            text = messages[-1]["content"]
            if "Critique the response" in text:
                out.append("It is rude.")
            else:  # revision: unchanged for prompts that mention 'keep', empty for 'blank'
                response = text.split("[Response]\n")[1].split("\n\n[Critique]")[0]
                out.append(response if "keep" in text else "" if "blank" in text else "A kinder answer.")
        return out


def test_principles_are_the_list_items():
    assert J.principles(CONSTITUTION) == ["Prefer correct answers.", "Prefer concise answers.", "Refuse harm."]
    assert J.principles("Just be good.") == ["Just be good."]


def test_default_constitution_exists_and_has_principles():
    assert len(J.principles(J.read_constitution())) >= 4


def test_always_first_slot_judge_is_fully_position_biased():
    verdicts = J.judge_pairs(ScriptedJudge(0.9, 0.9), CONSTITUTION, ITEMS)
    report = J.bias_report(verdicts, [True] * len(ITEMS))
    assert report["first_slot_rate"] == 1.0 and report["self_consistency"] == 0.0
    assert report["inconsistent_first_slot"] == 1.0 and report["mean_first_slot_prob"] == pytest.approx(0.9)
    assert report["mean_strength"] == pytest.approx(0.0)  # the two orders cancel exactly
    assert report["agreement"] == 0.0 and report["agreement_x_first_only"] == 1.0 and report["agreement_x_second_only"] == 0.0


def test_unbiased_correct_judge():
    report = J.bias_report(J.judge_pairs(ScriptedJudge(0.8, 0.2), CONSTITUTION, ITEMS), [True] * len(ITEMS))
    assert report["first_slot_rate"] == 0.5 and report["self_consistency"] == 1.0
    assert report["agreement"] == 1.0 and report["mean_strength"] == pytest.approx(0.6)


def test_averaging_both_orders_removes_a_constant_position_bias():
    # Prefers slot A by a lot, but a bit more when the good answer is there: single orders flip,
    # the average is right: p = (0.95 + (1 - 0.6)) / 2 = 0.675, strength 0.35.
    verdicts = J.judge_pairs(ScriptedJudge(0.95, 0.6), CONSTITUTION, ITEMS)
    report = J.bias_report(verdicts, [True] * len(ITEMS))
    assert report["self_consistency"] == 0.0 and report["first_slot_rate"] == 1.0
    assert report["agreement"] == 1.0 and verdicts[0].p_x == pytest.approx(0.675)
    assert report["mean_strength"] == pytest.approx(0.35)


def test_preference_rows_order_winners_and_apply_filters():
    items = ITEMS[:2] + [("q", "poor one", "good one")]  # third pair: the labelled x is the worse one
    verdicts = J.judge_pairs(ScriptedJudge(0.8, 0.2), CONSTITUTION, items)
    rows, dropped = J.preference_rows(items, verdicts, [True, True, True], "scripted")
    assert [r["chosen"] for r in rows] == ["good answer 0", "good answer 1", "good one"]
    assert [r["agrees_with_label"] for r in rows] == [True, True, False]
    assert rows[0]["strength"] == pytest.approx(0.6) and rows[0]["judge_prob"] == pytest.approx(0.8) and dropped == {}
    biased = J.judge_pairs(ScriptedJudge(0.9, 0.9), CONSTITUTION, items)
    rows, dropped = J.preference_rows(items, biased, None, "b", drop_inconsistent=True)
    assert rows == [] and dropped == {"inconsistent across orders": 3}
    rows, dropped = J.preference_rows(items, verdicts, None, "s", min_strength=0.7)
    assert rows == [] and dropped == {"strength below 0.7": 3}


def test_critique_and_revise_builds_pairs_and_drops_unchanged():
    items = [("Be nice to me", "Go away."), ("keep this one", "Fine."), ("blank", "Hm.")]
    rows, dropped = J.critique_and_revise(ScriptedJudge(0.5, 0.5), CONSTITUTION, items, seed=1)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("Be nice to me", "A kinder answer.", "Go away.")]
    assert rows[0]["principle"] in J.principles(CONSTITUTION) and rows[0]["critique"] == "It is rude."
    assert dropped == {"revision identical to the response": 1, "empty revision": 1}
    with pytest.raises(AlignkitError, match="row 1"):
        J.response_items([{"prompt": "p"}])


def test_local_judge_reads_letter_logprobs_like_a_hand_computation(tiny_path):
    import torch

    judge = J.LocalJudge(tiny_path, batch_size=4, bf16=False)
    conversations = [J.compare_messages(CONSTITUTION, p, x, y) for p, x, y in ITEMS[:2]]
    conversations.append(J.compare_messages(CONSTITUTION, "a much longer prompt " * 10, "yes", "no"))  # forces left padding
    probs, mass = judge.first_slot_probs(conversations)
    for conversation, p, m in zip(conversations, probs, mass):
        ids = torch.tensor([judge._render(conversation)])
        with torch.no_grad():
            logps = torch.log_softmax(judge.model(input_ids=ids).logits[0, -1].float(), -1)
        l_a, l_b = (torch.logsumexp(logps[judge.answer_ids[x]], 0) for x in "AB")
        assert p == pytest.approx(float(torch.sigmoid(l_a - l_b)), abs=1e-4)
        assert m == pytest.approx(float(l_a.exp() + l_b.exp()), rel=1e-3)
    assert judge.tokenizer.decode(judge._render(conversations[0])).endswith(J.ANSWER_PREFIX)
    verdicts = J.judge_pairs(judge, CONSTITUTION, ITEMS[:1])
    swapped = J.judge_pairs(judge, CONSTITUTION, [(ITEMS[0][0], ITEMS[0][2], ITEMS[0][1])])
    assert verdicts[0].p_x == pytest.approx(1 - swapped[0].p_x, abs=1e-5)  # the averaged verdict is order-free


# ---------------------------------------------------------------- OpenAI-compatible endpoint


class _Stub(BaseHTTPRequestHandler):
    mode = "logprobs"  # logprobs | text (400 on logprobs) | flaky (two 503s, then logprobs)
    calls = 0
    models: list = []  # the "model" of every request body, in order

    def log_message(self, *args):
        pass

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        type(self).calls += 1
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).models.append(body.get("model"))
        assert self.path == "/v1/chat/completions" and self.headers["Authorization"] == "Bearer sk-test"
        if self.mode == "flaky" and type(self).calls <= 2:
            return self._send(503, {"error": "warming up"})
        if self.mode == "text" and body.get("logprobs"):
            return self._send(400, {"error": "logprobs are not supported"})
        text = body["messages"][-1]["content"]
        if "[Response A]" not in text:
            return self._send(200, {"choices": [{"message": {"content": "A revised answer."}}]})
        good_first = "good" in text.split("[Response A]")[1].split("[Response B]")[0]
        letter = "A" if good_first else "B"
        reply = {"choices": [{"message": {"content": letter}}]}
        if body.get("logprobs"):
            p_a = 0.7 if good_first else 0.4
            reply["choices"][0]["logprobs"] = {"content": [{"token": letter, "logprob": 0.0, "top_logprobs": [
                {"token": "A", "logprob": math.log(p_a)}, {"token": "B", "logprob": math.log(1 - p_a)}, {"token": "The", "logprob": -9.0}]}]}
        self._send(200, reply)


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Stub.calls, _Stub.mode, _Stub.models = 0, "logprobs", []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_judge_reads_top_logprobs(stub):
    judge = J.make_judge(endpoint=stub + "/v1", api_key="sk-test", retries=0)
    report = J.bias_report(J.judge_pairs(judge, CONSTITUTION, ITEMS[:2]), [True, True])
    # Good in A: P(A) = 0.7; good in B: P(A) = 0.4 -> p_x = (0.7 + 0.6) / 2 = 0.65, single orders both right
    assert report["agreement"] == 1.0 and report["self_consistency"] == 1.0
    assert report["mean_strength"] == pytest.approx(0.3) and report["mean_first_slot_prob"] == pytest.approx(0.55)


def test_http_judge_falls_back_to_text_when_logprobs_are_refused(stub):
    _Stub.mode = "text"
    judge = J.make_judge(endpoint=stub, api_key="sk-test", retries=0)
    verdicts = J.judge_pairs(judge, CONSTITUTION, ITEMS[:2])
    assert [(v.p_x_first, v.p_x_second) for v in verdicts] == [(1.0, 1.0), (1.0, 1.0)]
    assert judge.logprobs is False and _Stub.calls == 5  # one refused request, then text only


def test_http_judge_retries_server_errors(stub):
    _Stub.mode = "flaky"
    judge = J.make_judge(endpoint=stub, api_key="sk-test", retries=3, backoff=0.01)
    assert judge.first_slot_probs([J.compare_messages(CONSTITUTION, "q", "good", "poor")])[0] == [pytest.approx(0.7)]
    assert _Stub.calls == 3


def test_http_judge_down_is_a_clear_error():
    with socket_closed_port() as port:
        judge = J.make_judge(endpoint=f"http://127.0.0.1:{port}", retries=1, backoff=0.01, timeout=2)
        with pytest.raises(AlignkitError, match="did not answer after 2 tries"):
            judge.first_slot_probs([J.compare_messages(CONSTITUTION, "q", "a", "b")])


class socket_closed_port:
    """A loopback port with nothing listening (bound, then released)."""

    def __enter__(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc):
        return False


def test_judge_cli_against_the_stub(stub, write_jsonl, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STUB_KEY", "sk-test")
    data = write_jsonl([{"prompt": p, "chosen": x, "rejected": y} for p, x, y in ITEMS[:3]])
    out = tmp_path / "judged.jsonl"
    argv = ["judge", data, "--out", str(out), "--endpoint", stub, "--api-key-env", "STUB_KEY", "--retries", "0"]
    assert main(argv) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["chosen"] for r in rows] == [x for _, x, _ in ITEMS[:3]] and all(r["strength"] == pytest.approx(0.3) for r in rows)
    report = json.loads((tmp_path / "judged.report.json").read_text())
    assert report["agreement"] == 1.0 and report["first_slot_rate"] == 0.5
    assert "position bias" in capsys.readouterr().out
    revise = write_jsonl([{"prompt": "Say hi", "completion": "no."}], "r.jsonl")
    assert main(["judge", revise, "--mode", "revise", "--out", str(tmp_path / "rev.jsonl"), "--endpoint", stub, "--api-key-env", "STUB_KEY"]) == 0
    (row,) = [json.loads(x) for x in (tmp_path / "rev.jsonl").read_text().splitlines()]
    assert (row["chosen"], row["rejected"]) == ("A revised answer.", "no.")


def test_judge_cli_errors_speak_to_the_user(write_jsonl, tmp_path, capsys):
    data = write_jsonl([{"prompt": "p", "text": "x"}])
    assert main(["judge", data, "--out", str(tmp_path / "o.jsonl"), "--endpoint", "http://127.0.0.1:9", "--retries", "0"]) == 2
    assert "prompt+chosen+rejected or prompt+response_a+response_b" in capsys.readouterr().err
    assert main(["judge", data, "--out", "o.jsonl", "--constitution", str(tmp_path / "none.md")]) == 2
    assert "constitution file" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["compare", "revise"])
def test_judge_cli_sends_the_endpoint_model_name(stub, write_jsonl, tmp_path, monkeypatch, mode):
    """`--endpoint-model NAME` is the "model" of every chat-completions request (vLLM answers 404 to "default")."""
    monkeypatch.setenv("STUB_KEY", "sk-test")
    rows = [{"prompt": p, "chosen": x, "rejected": y} for p, x, y in ITEMS[:2]]
    if mode == "revise":
        rows = [{"prompt": p, "completion": x} for p, x, _ in ITEMS[:2]]
    argv = ["judge", write_jsonl(rows), "--out", str(tmp_path / "out.jsonl"), "--mode", mode, "--endpoint", stub + "/v1",
            "--endpoint-model", "Qwen/Qwen2.5-7B-Instruct", "--api-key-env", "STUB_KEY", "--retries", "0"]
    assert main(argv) == 0
    assert _Stub.models and set(_Stub.models) == {"Qwen/Qwen2.5-7B-Instruct"}
