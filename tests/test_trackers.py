"""report_to goes through accelerate's trackers; metrics.jsonl is always written and every tracker holds the same numbers.

One tiny SFT run (3 steps, tiny-llama, `alignkit sft` in a subprocess so each tracker reads its environment fresh)
reports to W&B (offline: WANDB_MODE=offline, the run's `.wandb` transaction log read back record by record),
MLflow (a local file store, read back with MlflowClient.get_metric_history), trackio (its local SQLite store under
TRACKIO_DIR) and TensorBoard (<output_dir>/tensorboard), with `jsonl` left out of report_to on purpose. Each tracker's
(step, metric) -> value must equal metrics.jsonl's. Unknown names and missing packages fail when the config loads.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignkit.cli import main
from alignkit.config import SFTConfig, config_from_dict
from alignkit.errors import AlignkitError

PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio", "tensorboard": "tensorboard"}


def _data(folder: Path) -> str:
    rows = [{"prompt": f"Count to {i % 7 + 1}.", "completion": " ".join(str(k) for k in range(1, i % 7 + 2))} for i in range(20)]
    path = folder / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """(run folder, store folder, trackers used): one `alignkit sft` reporting to every installed tracker, jsonl not named."""
    root = tmp_path_factory.mktemp("trackers")
    trackers = [name for name, module in PACKAGES.items() if importlib.util.find_spec(module)]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(root / "wandb"), "WANDB_SILENT": "true",
           "MLFLOW_TRACKING_URI": f"file://{root / 'mlruns'}", "MLFLOW_ALLOW_FILE_STORE": "true",
           "TRACKIO_DIR": str(root / "trackio"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    (root / "wandb").mkdir()
    out = root / "run"
    proc = subprocess.run([sys.executable, "-m", "alignkit.cli", "sft", "--model", "tiny-llama", "--data", _data(root),
                           "--output_dir", str(out), "--max_steps", "3", "--batch_size", "4", "--eval_fraction", "0.2",
                           "--mixed_precision", "no", "--learning_rate", "1e-3", "--report_to", ",".join(trackers)],
                          env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, root, trackers


def _jsonl(out: Path) -> dict:
    """{(step, metric): value} of metrics.jsonl's finite numbers (what every tracker receives)."""
    found = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        step = row.pop("step")
        found.update({(step, k): v for k, v in row.items() if isinstance(v, (int, float)) and math.isfinite(v)})
    return found


def _wandb_records(path: str):
    """The protobuf Records of a W&B `.wandb` file: a 7-byte header (':W&B', 0xBEE1, version), then 32 KiB blocks of
    LevelDB-log chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert struct.unpack("<4sH", data[:6]) == (b":W&B", 0xBEE1)
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _read_wandb(out: Path, root: Path) -> dict:
    files = glob.glob(str(root / "wandb" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, files
    found = {}
    for record in _wandb_records(files[0]):
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            found.update({(row["_step"], k): v for k, v in row.items() if not k.startswith("_")})
    return found


def _read_mlflow(out: Path, root: Path) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file://{root / 'mlruns'}")
    experiment = client.get_experiment_by_name("alignkit")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["learning_rate"] == "0.001" and run.data.tags["mlflow.runName"] == "run"  # the config, the run's name
    return {(m.step, key): m.value for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)}


def _read_trackio(out: Path, root: Path) -> dict:
    with sqlite3.connect(root / "trackio" / "alignkit.db") as db:  # trackio's local store: one SQLite file per project
        rows = db.execute("SELECT step, metrics FROM metrics WHERE run_name = 'run'").fetchall()
    return {(step, k): v for step, metrics in rows for k, v in json.loads(metrics).items()}


def _read_tensorboard(out: Path, root: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return {(e.step, tag): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}


READERS = {"wandb": _read_wandb, "mlflow": _read_mlflow, "trackio": _read_trackio, "tensorboard": _read_tensorboard}


@pytest.mark.parametrize("tracker", list(PACKAGES))
def test_each_tracker_holds_the_numbers_of_metrics_jsonl(tracked_run, tracker, monkeypatch):
    out, root, used = tracked_run
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read the run's file store back
    if tracker not in used:
        pytest.skip(f"{PACKAGES[tracker]} is not installed (pip install 'alignkit[trackers]')")
    expected = _jsonl(out)  # written although report_to did not name jsonl
    assert {step for step, _ in expected} == {1, 2, 3} and (3, "eval/loss") in expected and (1, "loss") in expected
    recorded = READERS[tracker](out, root)
    assert set(recorded) == set(expected)
    tolerance = 1e-6 if tracker == "tensorboard" else 0  # TensorBoard stores float32; the others keep every digit
    for key, value in expected.items():
        assert recorded[key] == pytest.approx(value, rel=tolerance, abs=tolerance), key


def test_an_unknown_tracker_fails_before_any_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    args = ["sft", "--model", "tiny-llama", "--data", _data(tmp_path), "--output_dir", str(tmp_path / "run")]
    assert main([*args, "--report_to", "jsonl,nonexistent"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "report_to: unknown tracker 'nonexistent'" in err
    assert "choose from jsonl, aim, clearml, comet_ml, dvclive, mlflow, swanlab, tensorboard, trackio, wandb" in err
    assert main([*args, "--report_to", "wandbb"]) != 0
    assert "did you mean wandb?" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_tracker_without_its_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr("accelerate.utils.imports.is_wandb_available", lambda: False)
    with pytest.raises(AlignkitError, match=r"report_to: wandb needs the package wandb, which is not installed; install it with `pip install wandb`"):
        config_from_dict(SFTConfig, {"data": "x.jsonl", "report_to": ["wandb"]})


def test_mlflow_without_a_usable_store_is_refused_with_what_to_set(monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(AlignkitError, match="MLFLOW_ALLOW_FILE_STORE=true"):
        config_from_dict(SFTConfig, {"data": "x.jsonl", "report_to": ["mlflow"]})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")  # a server: nothing to check before it runs
    assert config_from_dict(SFTConfig, {"data": "x.jsonl", "report_to": ["mlflow"]}).report_to == ["mlflow"]


class Recorder:
    """A tracker registered with accelerate under a new name: report_to accepts any name accelerate knows."""

    name, requires_logging_directory, main_process_only = "alignkit_test_recorder", False, False

    def __init__(self, run_name: str, **kwargs):
        self.project, self.logged, self.config, self.finished = run_name, [], None, False

    tracker = property(lambda self: self)
    start = lambda self: None  # noqa: E731

    def store_init_configuration(self, values):
        self.config = values

    def log(self, values, step=None, **kwargs):
        self.logged.append((step, values))

    def finish(self):
        self.finished = True


def test_trackers_get_finite_numbers_only_and_a_flat_config(tmp_path, monkeypatch):
    from accelerate import tracking

    from alignkit.train.loop import MetricsLogger, make_accelerator

    # what accelerate.tracking.register_tracker_class does, undone after the test
    monkeypatch.setitem(tracking.LOGGER_TYPE_TO_CLASS, Recorder.name, type("Recorder", (Recorder, tracking.GeneralTracker), {}))
    config = config_from_dict(SFTConfig, {"data": "x.jsonl", "report_to": ["alignkit_test_recorder"], "mixed_precision": "no",
                                          "output_dir": str(tmp_path)})
    accelerator = make_accelerator(config)
    logger = MetricsLogger(tmp_path, True, accelerator=accelerator, project="proj",
                           config={"lr": 0.1, "monitor": {"every": 2}, "target_modules": ["q_proj"], "reference": None})
    (tracker,) = accelerator.trackers
    logger.log(1, {"loss": float("nan"), "grad_norm": float("inf"), "lr": 0.1, "tokens": torch.tensor(7), "note": "text"})
    logger.close()
    assert tracker.project == "proj" and tracker.finished and not accelerator.trackers
    assert tracker.config == {"lr": 0.1, "monitor/every": 2, "target_modules": '["q_proj"]', "reference": "null"}
    assert tracker.logged == [(1, {"lr": 0.1, "tokens": 7})]  # NaN, inf and text skipped
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert math.isnan(line["loss"]) and line["note"] == "text"  # metrics.jsonl keeps everything
