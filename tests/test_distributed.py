"""Two processes (DDP over gloo) take the same optimizer step as one process with the doubled batch."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file


def test_two_ranks_match_one_rank_with_double_batch(tmp_path, tiny_path, write_jsonl):
    rows = [{"prompt": f"Spell {w}.", "completion": " ".join(w)} for w in ("cat", "house", "tree", "alignment", "x", "model", "reward", "policy")]
    data = write_jsonl(rows)
    common = ["sft", "--model", tiny_path, "--data", data, "--eval_fraction", "0", "--max_steps", "2", "--learning_rate", "1e-2",
              "--mixed_precision", "no", "--report_to", "jsonl", "--max_grad_norm", "0", "--warmup_ratio", "0", "--chat_template", "always"]
    run = lambda *extra: subprocess.run([sys.executable, "-m", "alignkit.cli", *common, *extra],  # noqa: E731
                                        check=True, capture_output=True, text=True, timeout=600)
    run("--output_dir", str(tmp_path / "one"), "--batch_size", "4")
    result = run("--output_dir", str(tmp_path / "two"), "--batch_size", "2", "--num-processes", "2")
    one = [json.loads(line) for line in (tmp_path / "one/metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two/metrics.jsonl").read_text().splitlines()]
    assert [round(m["loss"], 5) for m in one] == [round(m["loss"], 5) for m in two], result.stderr[-2000:]
    a, b = load_file(tmp_path / "one/model/model.safetensors"), load_file(tmp_path / "two/model/model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
