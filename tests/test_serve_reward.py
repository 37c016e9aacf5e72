"""`alignkit serve-reward`: a tiny trained reward model served by a real subprocess on a free port. Its scores
equal RewardModel's in-process ones, `alignkit grpo --reward_url` trains against it, bad requests are 422s
naming the key; the ensemble arithmetic and the NaN guard are checked in-process on scripted models."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import types

import httpx
import pytest
import torch

from alignkit.cli import main
from netutil import free_port

TOPICS = ["cats", "the moon", "rivers", "bread", "trains", "music", "snow", "chess"]
POLITE, RUDE = "Happy to help! Here is a kind note about {}.", "No. I refuse to talk about {}, go away."


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, tiny_path):
    import alignkit

    root = tmp_path_factory.mktemp("serve_reward")
    rows = [{"prompt": f"Tell me about {t}.", "chosen": POLITE.format(t), "rejected": RUDE.format(t)} for t in TOPICS * 4]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    alignkit.reward({"model": tiny_path, "data": str(root / "train.jsonl"), "output_dir": str(root / "rm"), "learning_rate": 1e-3,
                     "max_steps": 6, "batch_size": 8, "eval_fraction": 0, "report_to": ["jsonl"], "warmup_ratio": 0,
                     "mixed_precision": "no"})
    return root


@pytest.fixture(scope="module")
def server(reward_dir):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(reward_dir / "server.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "alignkit.cli", "serve-reward", "--model", str(reward_dir / "rm"),
                                "--port", str(port), "--mixed_precision", "no", "--batch-size", "8"],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"serve-reward exited with {process.returncode}: {log.read()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("serve-reward did not answer /health within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_served_scores_equal_in_process_scores_and_prefer_chosen(server, reward_dir):
    from alignkit.models.reward import RewardModel

    prompts = [f"Tell me about {t}." for t in TOPICS[:4]] + [[{"role": "user", "content": "Tell me about tea."}]]
    chosen, rejected = [POLITE.format(t) for t in TOPICS[:4] + ["tea"]], [RUDE.format(t) for t in TOPICS[:4] + ["tea"]]
    answer = httpx.post(server + "/score", json={"prompts": prompts * 2, "responses": chosen + rejected, "topic": ["x"] * 10}, timeout=30)
    assert answer.status_code == 200, answer.text
    served = answer.json()["rewards"]
    expected = RewardModel.load(str(reward_dir / "rm"), bf16=False).score(prompts * 2, chosen + rejected).mean.tolist()
    assert served == pytest.approx(expected, abs=1e-5)
    assert all(c > r for c, r in zip(served[:5], served[5:]))
    assert httpx.post(server + "/", json={"prompts": [], "responses": []}, timeout=10).json() == {"rewards": []}


def test_grpo_trains_against_the_served_reward(server, tiny_path, tmp_path, write_jsonl):
    before = httpx.get(server + "/health", timeout=5).json()["requests"]
    prompts = write_jsonl([{"prompt": f"Tell me about {t}."} for t in TOPICS])
    argv = ["grpo", "--model", tiny_path, "--data", prompts, "--reward_url", server + "/score", "--output_dir", str(tmp_path / "g"),
            "--max_steps", "2", "--prompts_per_step", "2", "--group_size", "2", "--batch_size", "4", "--max_new_tokens", "4",
            "--mixed_precision", "no", "--report_to", "jsonl", "--reward_retries", "0"]
    assert main(argv) == 0
    logged = [json.loads(line) for line in (tmp_path / "g" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in logged if "reward" in m]
    assert len(steps) == 2 and all(math.isfinite(m["reward"]) and m["reward/skipped"] == 0 for m in steps)
    assert httpx.get(server + "/health", timeout=5).json()["requests"] >= before + 2


@pytest.mark.parametrize("body, key", [
    ({"responses": ["a"]}, "'prompts'"),
    ({"prompts": ["p"]}, "'responses'"),
    ({"prompts": "p", "responses": ["a"]}, "'prompts'"),
    ({"prompts": ["p", "q"], "responses": ["a"]}, "'prompts' has 2 entries but 'responses' has 1"),
    ({"prompts": ["p"], "responses": [3]}, "'responses'[0]"),
    ({"prompts": [None], "responses": ["a"]}, "'prompts'[0]"),
    ({"prompts": [[{"role": "user", "content": 5}]], "responses": ["a"]}, "'prompts'[0]"),
    ([1, 2], "not an object"),
])
def test_bad_requests_are_422_with_one_sentence_naming_the_key(server, body, key):
    answer = httpx.post(server + "/score", json=body, timeout=10)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and key in detail and detail.count(". ") == 0 and "\n" not in detail


def test_a_body_that_is_not_json_is_422(server):
    answer = httpx.post(server + "/score", content=b"prompts=a", timeout=10)
    assert answer.status_code == 422 and "not JSON" in answer.json()["detail"]


def test_a_missing_model_folder_is_one_sentence_at_start_up(tmp_path, capsys):
    assert main(["serve-reward", "--model", str(tmp_path / "nope"), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alignkit serve-reward: error: --model ") and "nope is not an existing folder" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- in-process, on scripted models

def _scripted(raw, mean=0.0, std=1.0, k=1.0):
    """A stand-in RewardModel whose members give `raw` (K, N) whatever the input."""
    members = torch.tensor(raw, dtype=torch.float32)
    return types.SimpleNamespace(normalization={"mean": mean, "std": std}, k=k, members=[None] * len(members), path="scripted",
                                 score=lambda prompts, responses, batch_size=16: types.SimpleNamespace(members=members))


def test_several_folders_are_aligned_then_scored_conservatively():
    from alignkit.rl.serve_reward import RewardScorer

    a, b = _scripted([[1.0, 2.0]], mean=0.0, std=2.0), _scripted([[2.0, 4.0]], mean=1.0, std=4.0)
    # shifts -0.5 and +0.5: members [1.5, 2.5] and [1.5, 3.5]; mean [1.5, 3.0], std [0, 0.5]
    assert RewardScorer([a, b], "mean")(["p", "q"], ["x", "y"]) == pytest.approx([1.5, 3.0])
    assert RewardScorer([a, b], "conservative", k=2.0)(["p", "q"], ["x", "y"]) == pytest.approx([1.5, 2.0])
    # standardised by the folders' average mean (0.5) and std (3.0)
    assert RewardScorer([a, b], "mean", standardize=True)(["p", "q"], ["x", "y"]) == pytest.approx([1 / 3, 2.5 / 3])
    assert RewardScorer([a], "conservative", k=5.0)(["p", "q"], ["x", "y"]) == pytest.approx([1.0, 2.0])  # one model: its score


def test_a_score_that_is_not_finite_is_a_500_not_a_nan():
    from fastapi.testclient import TestClient

    from alignkit.rl.serve_reward import RewardScorer, create_app

    client = TestClient(create_app(RewardScorer([_scripted([[0.5, math.nan]])])))
    answer = client.post("/score", json={"prompts": ["p", "q"], "responses": ["x", "y"]})
    assert answer.status_code == 500 and "'responses'[1]" in answer.json()["detail"] and "nan" in answer.text.lower()
    assert client.get("/health").json()["status"] == "ok"
