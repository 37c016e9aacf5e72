"""Model cards and push_to_hub.

A LoRA SFT run (tiny-llama, 3 steps) writes README.md cards into model/ and adapter/ and pushes both to a local
stand-in of the Hub: a small HTTP server in this process answering the three endpoints huggingface_hub's
`create_repo` + `upload_folder` call (POST /api/repos/create, /api/models/{repo}/preupload/{rev} and
/api/models/{repo}/commit/{rev}), reached through HF_ENDPOINT. It answers `uploadMode: regular` for every file, so
the client sends each file base64-encoded inside the NDJSON commit (the real Hub asks for LFS/Xet uploads of large
files; that transfer path is huggingface_hub's own and not re-tested here). A real HTTP stand-in rather than a fake
HfApi object: it checks the requests alignkit's upload really makes, headers (token) included.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from alignkit import __version__
from alignkit.config import DPOConfig, GRPOConfig, KTOConfig, RewardConfig, SFTConfig, config_from_dict
from alignkit.errors import AlignkitError
from alignkit.train.model_card import model_card


class FakeHub(BaseHTTPRequestHandler):
    """The Hub endpoints of create_repo and upload_folder; `self.server.repos[repo_id]` = {"private", "files", "auth"}."""

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        parts = self.path.split("?")[0].strip("/").split("/")
        repos = self.server.repos
        if parts[:2] == ["api", "validate-yaml"]:  # the client checks README.md's metadata before uploading it
            meta = yaml.safe_load(json.loads(body)["content"].split("---\n")[1])
            self.server.validated.append(meta)
            bad = [k for k in ("base_model",) if k in meta and not re.fullmatch(r"[\w.-]+/[\w.-]+", str(meta[k]))]
            return self._json({"errors": [{"message": f"{k} is not a Hub model id"} for k in bad]}, 400 if bad else 200)
        if parts[:3] == ["api", "repos", "create"]:
            request = json.loads(body)
            repo_id = f"{request['organization']}/{request['name']}"
            repos.setdefault(repo_id, {"visibility": request.get("visibility"), "files": {}, "auth": self.headers.get("Authorization")})
            return self._json({"url": f"{self.server.endpoint}/{repo_id}", "name": repo_id})
        if parts[0] == "api" and parts[1] == "models" and parts[4] in ("preupload", "commit"):
            repo_id = "/".join(parts[2:4])
            if repo_id not in repos:
                return self._json({"error": "Repository not found"}, 404)
            if parts[4] == "preupload":
                files = json.loads(body)["files"]
                return self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    repos[repo_id]["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] != "header":
                    return self._json({"error": f"unexpected {item['key']}"}, 400)
            return self._json({"commitUrl": f"{self.server.endpoint}/{repo_id}/commit/0123abcd", "commitOid": "0123abcd" * 5})
        self._json({"error": f"not found: {self.path}"}, 404)

    def _json(self, payload, status=200):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.repos, server.validated, server.endpoint = {}, [], f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory, hub):
    """A LoRA SFT run on tiny-llama with push_to_hub to the stand-in (as `alignkit sft` on the command line)."""
    root = tmp_path_factory.mktemp("card")
    rows = [{"prompt": f"Count to {i % 5 + 1}.", "completion": " ".join(str(k) for k in range(1, i % 5 + 2))} for i in range(20)]
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_test_token", "HF_HUB_OFFLINE": "0", "OMP_NUM_THREADS": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    out = root / "run"
    proc = subprocess.run([sys.executable, "-m", "alignkit.cli", "sft", "--model", "tiny-llama", "--data", "sft.jsonl",
                           "--output_dir", str(out), "--max_steps", "3", "--batch_size", "4", "--grad_accum_steps", "2",
                           "--eval_fraction", "0.2", "--lora_r", "4", "--lora_alpha", "8", "--learning_rate", "1e-3",
                           "--mixed_precision", "no", "--report_to", "jsonl", "--push_to_hub", "true", "--hub_model_id", "me/tiny-sft"],
                          env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _front_matter(card: str) -> tuple[dict, str]:
    _, meta, body = card.split("---\n", 2)
    return yaml.safe_load(meta), body


def test_the_saved_model_and_adapter_carry_a_card_with_what_reproduces_the_run(pushed_run):
    out = pushed_run
    summary = json.loads((out / "summary.json").read_text())
    meta, body = _front_matter((out / "model" / "README.md").read_text())
    assert meta["library_name"] == "transformers" and meta["tags"] == ["alignkit", "sft", "lora"] and "base_model" not in meta  # an alias is no Hub id
    assert "- **Base model:** `tiny-llama`" in body and str(Path.home()) not in body and ".cache" not in body
    assert "Supervised fine-tuning" in body and "`sft.jsonl`: 16 training rows, 4 held out (0.2 split off)" in body
    for row in ("| learning rate | 0.001 |", "| batch size | 4 x 2 accumulation |", "| optimizer steps | 3 |",
                "| LoRA r / alpha / dropout | 4 / 8 / 0.05 |"):
        assert row in body, row
    assert f"| final_loss | {summary['final_loss']:.4g} |" in body and f"| eval/loss | {summary['eval/loss']:.4g} |" in body
    assert f"alignkit {__version__}" in body and f"alignkit sft --config {out / 'config.yaml'}" in body
    assert "Ouyang et al. 2022" in body and "Hu et al. 2022, LoRA" in body and "@article{hu2022lora" in body

    adapter_meta, adapter_body = _front_matter((out / "adapter" / "README.md").read_text())  # PEFT's blank template replaced
    assert adapter_meta["library_name"] == "peft" and "This LoRA adapter was trained" in adapter_body
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "tiny-llama"  # the name the user gave, not the cache path


def test_the_adapter_still_loads_by_the_name_it_records(pushed_run):
    from alignkit.models.load import load_causal_lm

    model = load_causal_lm(str(pushed_run / "adapter"))
    assert hasattr(model, "peft_config") and model.peft_config["default"].r == 4


def test_push_to_hub_uploads_the_model_its_card_and_the_adapter(pushed_run, hub):
    out = pushed_run
    repo = hub.repos["me/tiny-sft"]
    assert repo["visibility"] == "private" and repo["auth"] == "Bearer hf_test_token"
    local = {str(p.relative_to(out / "model")): p.read_bytes() for p in (out / "model").rglob("*") if p.is_file()}
    local.update({f"adapter/{p.relative_to(out / 'adapter')}": p.read_bytes() for p in (out / "adapter").rglob("*") if p.is_file()})
    assert {"README.md", "model.safetensors", "config.json", "adapter/README.md", "adapter/adapter_model.safetensors",
            "adapter/adapter_config.json"} <= set(repo["files"])
    assert repo["files"] == local  # byte for byte
    assert [m["library_name"] for m in hub.validated] == ["transformers", "peft"]  # both cards' metadata passed the check


@pytest.mark.parametrize("cls, stage, values, expected", [
    (DPOConfig, "dpo", {"loss": "ipo", "beta": 0.2}, ["IPO (loss `ipo`)", "Azar et al. 2023", "Rafailov et al. 2023", "| beta | 0.2 |"]),
    (DPOConfig, "dpo", {"rpo_alpha": 1.0}, ["DPO (sigmoid loss)", "Rafailov et al. 2023", "Pang et al. 2024"]),
    (KTOConfig, "kto", {}, ["Kahneman-Tversky", "Ethayarajh et al. 2024", "| desirable weight | 1 |"]),
    (GRPOConfig, "grpo", {"reward_function": "hhh-mini-gold"}, ["GRPO", "Shao et al. 2024", "Schulman et al. 2017", "| kl_coef | 0.04 (fixed) |",
                                                                "| prompts per step x group size | 16 x 4 |"]),
    (GRPOConfig, "ppo", {"reward_function": "hhh-mini-gold", "advantage": "gae", "group_size": 1}, ["GAE with a value model", "Schulman et al. 2016"]),
    (RewardConfig, "reward", {}, ["Bradley-Terry", "Bradley & Terry 1952", "Ouyang et al. 2022"]),
    (SFTConfig, "sft", {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "data": "trl-lib/Capybara"}, ["base_model: HuggingFaceTB/SmolLM2-135M-Instruct", "- trl-lib/Capybara"]),
    (SFTConfig, "sft", {"model": "smollm2-135m-instruct"}, ["base_model: HuggingFaceTB/SmolLM2-135M-Instruct", "- **Base model:** `smollm2-135m-instruct`"]),
])
def test_each_method_names_its_loss_hyperparameters_and_papers(tmp_path, cls, stage, values, expected):
    config = config_from_dict(cls, {"model": "tiny-llama", "data": "pairs.jsonl", "output_dir": str(tmp_path), **values})
    card = model_card(config, stage, {"steps": 10, "train_rows": 90, "eval_rows": 10, "final_loss": 0.5, "beta": values.get("beta", 0.1)}, tmp_path)
    for text in expected:
        assert text in card, text


def test_push_to_hub_is_refused_before_training_without_a_repo_or_token(monkeypatch):
    base = {"data": "x.jsonl", "push_to_hub": True}
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(AlignkitError, match="hub_model_id must name the repo as owner/name"):
        config_from_dict(SFTConfig, base)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(AlignkitError, match="HF_TOKEN is not set"):
        config_from_dict(SFTConfig, {**base, "hub_model_id": "me/x"})
    with pytest.raises(AlignkitError, match="read from the HF_TOKEN environment variable only"):
        config_from_dict(SFTConfig, {"data": "x.jsonl", "hub_token": "hf_secret"})
