"""`push_to_hub`: the saved model (with its card) and its LoRA adapter, uploaded to one Hugging Face Hub repo.

Layout of the repo `hub_model_id`: its root is `<output_dir>/model/` (the merged model, loadable with
`from_pretrained(hub_model_id)`), and the adapter goes in its `adapter/` subfolder
(`PeftModel.from_pretrained(base, hub_model_id, subfolder="adapter")`). A run with `merge_lora: false` saved only
the adapter: it becomes the repo root. The token is `$HF_TOKEN` only (config validation refuses a config value);
`$HF_ENDPOINT` points at another Hub (a mirror, or the test's local stand-in).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from alignkit.errors import AlignkitError

log = logging.getLogger("alignkit")


def hub_api():
    """`huggingface_hub.HfApi` for $HF_ENDPOINT (read now, not when huggingface_hub was imported) and $HF_TOKEN."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=os.environ.get("HF_TOKEN") or None)


def uploads(output_dir: str | Path) -> list[tuple[Path, str, list | None]]:
    """[(local folder, path in repo, allow_patterns)]: model/ at the root and adapter/ as `adapter`, or a lone adapter at the root."""
    output_dir = Path(output_dir)
    model, adapter = output_dir / "model", output_dir / "adapter"
    if model.is_dir():
        return [(model, "", None)] + ([(adapter, "adapter", None)] if adapter.is_dir() else [])
    return [(adapter, "", None)] if adapter.is_dir() else []


def push_to_hub(config, output_dir: str | Path | None = None, folders: list[tuple[Path, str, list | None]] | None = None,
                api=None) -> str:
    """Creates `config.hub_model_id` (private per `hub_private`; an existing repo is kept) and uploads the saved folders;
    returns the repo URL. `folders` overrides what `uploads` finds (a reward ensemble: its card, ensemble.json, members)."""
    output_dir = Path(output_dir or config.output_dir)
    folders = folders if folders is not None else uploads(output_dir)
    if not folders:
        raise AlignkitError(f"push_to_hub: {output_dir} holds no saved model/ or adapter/ to upload")
    api = api or hub_api()
    try:
        url = api.create_repo(config.hub_model_id, private=config.hub_private, exist_ok=True, repo_type="model")
        for folder, path_in_repo, allow_patterns in folders:
            api.upload_folder(repo_id=config.hub_model_id, folder_path=str(folder), path_in_repo=path_in_repo or None,
                              allow_patterns=allow_patterns, repo_type="model",
                              commit_message=f"alignkit: upload {path_in_repo or 'model'} from {output_dir}")
    except Exception as exc:  # HTTP, auth and network errors all end the same way: the run is saved, the upload is not
        raise AlignkitError(f"push_to_hub: uploading {output_dir} to {config.hub_model_id} failed ({type(exc).__name__}: {exc}); "
                            f"the run is saved locally, upload it later with `hf upload {config.hub_model_id} {folders[0][0]}`") from None
    log.info(f"pushed {', '.join(str(f) for f, _, _ in folders)} to {url}")
    return str(url)
