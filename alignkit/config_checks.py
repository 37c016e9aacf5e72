"""Checks of config values that need more than a range: the trackers in `report_to`, and the Hub options.

Run by `TrainArgs.validate()` when a config loads, before any model or folder is touched.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re

from accelerate import tracking as accelerate_tracking
from accelerate.utils import imports as accelerate_imports

from alignkit.errors import AlignkitError


# pip packages of the trackers whose import name differs or that have a lighter form
TRACKER_PACKAGES = {"mlflow": "mlflow-skinny", "comet_ml": "comet-ml", "tensorboard": "tensorboard"}


def check_trackers(report_to: list) -> None:
    """Refuses a `report_to` entry accelerate does not know, or whose package is not installed, naming the pip command."""
    known = ["jsonl", *sorted(accelerate_tracking.LOGGER_TYPE_TO_CLASS)]  # accelerate's own and any registered with it
    for name in report_to:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise AlignkitError(f"report_to: unknown tracker {name!r}; {hint}choose from {', '.join(known)}")
        available = getattr(accelerate_imports, f"is_{name}_available", None)  # how accelerate itself detects it
        if available is not None and not available():
            package = TRACKER_PACKAGES.get(name, name)
            raise AlignkitError(f"report_to: {name} needs the package {package}, which is not installed; install it with "
                                f"`pip install {package}` (`pip install 'alignkit[trackers]'` installs wandb, mlflow-skinny and "
                                f"trackio), or remove {name} from report_to")
        if name == "mlflow" and (problem := mlflow_store_problem()):
            raise AlignkitError(f"report_to: mlflow {problem}")


def mlflow_store_problem() -> str | None:
    """Why mlflow could not open its tracking store, or None: mlflow-skinny cannot open the default sqlite store, and
    mlflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE=true."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    where = ("set MLFLOW_TRACKING_URI to your MLflow server (http://host:5000) or to a local folder (file:///path/mlruns, "
             "with MLFLOW_ALLOW_FILE_STORE=true)")
    if not uri and not (importlib.util.find_spec("sqlalchemy") and importlib.util.find_spec("alembic")):
        return (f"has no tracking store: MLFLOW_TRACKING_URI is not set, and mlflow-skinny cannot open mlflow's default "
                f"sqlite store; {where}, or `pip install mlflow` for the sqlite store")
    if (uri.startswith("file:") or (uri and "://" not in uri)) and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        return f"refuses the file store {uri} unless MLFLOW_ALLOW_FILE_STORE=true is set (mlflow 3 keeps it in maintenance mode); set it, or use a server"
    return None


def check_hub_options(config) -> None:
    """push_to_hub needs hub_model_id and $HF_TOKEN; a token written into a config is refused (it would land in config.yaml)."""
    if config.hub_token:
        raise AlignkitError("hub_token: the Hub token is read from the HF_TOKEN environment variable only, never from a config "
                            "(config.yaml is saved next to the model and uploaded with it); remove hub_token and export HF_TOKEN")
    if not config.push_to_hub:
        return
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", config.hub_model_id or ""):
        raise AlignkitError(f"push_to_hub: hub_model_id must name the repo as owner/name (e.g. my-name/{config.output_dir.rstrip('/').split('/')[-1] or 'model'}), "
                            f"got {config.hub_model_id!r}")
    if not os.environ.get("HF_TOKEN"):
        raise AlignkitError("push_to_hub: the environment variable HF_TOKEN is not set; export HF_TOKEN=hf_... (a write token "
                            "from https://huggingface.co/settings/tokens), or set push_to_hub: false")
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        raise AlignkitError("push_to_hub: HF_HUB_OFFLINE is set, so the upload after training would be refused; unset "
                            "HF_HUB_OFFLINE, or set push_to_hub: false and upload later with `hf upload`")
