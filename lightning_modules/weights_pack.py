"""A run's trained network as a shareable folder, optionally uploaded to the Hugging Face Hub.

``python export.py --ckpt RUN.ckpt --format safetensors --output DIR [--push-to-hub ORG/NAME]`` writes::

    DIR/model.safetensors   weights, variant, config, classes and preprocessing (coatnet.weights format)
    DIR/config.json         the same metadata as JSON, for people and the Hub's file viewer
    DIR/README.md           a model card: metrics the checkpoint recorded, the run's config.yaml, commands

``--model.init_from DIR`` (or ``hf-hub:ORG/NAME`` once uploaded) fine-tunes from it; ``export.py --ckpt DIR``
exports it. The checkpoint is read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from coatnet.errors import CheckpointError, first_line
from coatnet.hub import CONFIG_FILE, WEIGHTS_FILES, is_hub_name
from coatnet.weights import read_safetensors, read_torch_file, save_weights

CARD_FILE = "README.md"
PREPROCESSING_KEYS = ("mean", "std", "interpolation", "crop_pct")


def pack(
    model: nn.Module,
    info: Mapping[str, Any],
    source: str | Path,
    folder: Path,
    command: str,
    repo_id: str | None = None,
) -> Path:
    """Write weights, config.json and model card of ``model`` (as loaded from ``source``) into ``folder``;
    the card's examples name ``hf-hub:{repo_id}`` when it is to be uploaded there."""
    missing = [key for key in PREPROCESSING_KEYS if key not in info]
    if missing:
        raise CheckpointError(
            f"{source} records no {', '.join(missing)} (checkpoints written before data_info was stored): "
            "fine-tune a few steps from it with this version (--model.init_from) and pack that checkpoint"
        )
    folder.mkdir(parents=True, exist_ok=True)
    run = run_record(source)
    preprocessing = {key: info[key] for key in PREPROCESSING_KEYS}
    weights = save_weights(
        folder / WEIGHTS_FILES[0], model, preprocessing, {"packed_from": str(source), **run["progress"]},
        class_names=info.get("class_names"), variant=run["model_name"] or info.get("variant"),
    )  # fmt: skip
    meta = json.loads(read_safetensors(weights)[1]["meta"])
    _write_text(folder / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
    _write_text(folder / CARD_FILE, model_card(meta, run, command, f"hf-hub:{repo_id}" if repo_id else str(folder)))
    return folder


def run_record(source: str | Path) -> dict[str, Any]:
    """Model name, metrics, progress and config.yaml of the run a Lightning checkpoint belongs to (empty parts
    for a weights file). Tensors are read lazily (``mmap``): only the few small entries used are touched."""
    record: dict[str, Any] = {"model_name": None, "metrics": {}, "progress": {}, "config": None}
    if is_hub_name(source) or Path(source).suffix != ".ckpt":
        return record
    state = read_torch_file(source, mmap=True)
    record["model_name"] = (state.get("hyper_parameters") or {}).get("model_name")
    record["progress"] = {key: int(state[key]) for key in ("epoch", "global_step") if key in state}
    for name, callback in (state.get("callbacks") or {}).items():
        if str(name).startswith("ModelCheckpoint") and isinstance(callback, Mapping) and callback.get("monitor"):
            score = callback.get("best_model_score")
            if isinstance(score, Tensor):
                record["metrics"][f"best {callback['monitor']}"] = round(float(score), 6)
    config = Path(source).resolve().parent.parent / "config.yaml"  # VERSION/checkpoints/x.ckpt -> VERSION/config.yaml
    record["config"] = config.read_text() if config.is_file() else None
    return record


def model_card(meta: Mapping[str, Any], run: Mapping[str, Any], command: str, name: str) -> str:
    """README.md for the Hub: what the weights are, how to use them, what they scored, how they were made."""
    config, pre = meta["config"], meta["preprocessing"]
    classes = meta.get("class_names")
    lines = [
        "---", "library_name: coatnet-lightning", "tags:", "- image-classification", "- coatnet", "---", "",
        f"# {meta.get('variant') or 'CoAtNet'}", "",
        f"CoAtNet weights: {config['img_size'][0]}x{config['img_size'][1]} input, {config['num_classes']} classes"
        + (f" ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})" if classes else "") + ".",
        f"Evaluation preprocessing: mean {list(pre['mean'])}, std {list(pre['std'])}, {pre['interpolation']} "
        f"resize, crop_pct {pre['crop_pct']}.", "",
        "## Use", "", "```bash",
        f"python cli.py fit --config YOUR_CONFIG.yaml --model.model_name {meta.get('variant') or 'VARIANT'} "
        f"--model.init_from {name}   # fine-tune",
        f"python export.py --ckpt {name} --format onnx --output model.onnx   # deploy",
        "```", "",
    ]  # fmt: skip
    if run["metrics"] or run["progress"]:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in {**run["metrics"], **run["progress"]}.items()]
        lines.append("")
    lines += ["## How it was made", "", "```bash", command, "```", ""]
    if run["config"]:
        lines += ["Training config (`config.yaml` of the run):", "", "```yaml", run["config"].rstrip(), "```", ""]
    return "\n".join(lines)


def push_to_hub(folder: Path, repo_id: str, private: bool) -> str:
    """Upload ``folder`` to the Hub repository ``repo_id`` (created if needed); returns its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        url = api.create_repo(repo_id, exist_ok=True, private=private)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=f"Upload {folder.name}")
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise CheckpointError(
            f"uploading {folder} to {repo_id} failed ({first_line(err)}): log in with `hf auth login` (or set "
            "HF_TOKEN) with write access; the packed folder is kept, so run again or upload it with `hf upload`"
        ) from None
    return str(url)


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` in one step: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
