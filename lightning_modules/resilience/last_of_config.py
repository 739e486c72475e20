"""Which checkpoint ``--ckpt_path last`` names, known from the parsed config before the Trainer exists.

The CLI needs it before instantiation: a run that resumes takes its weights from that checkpoint, so
``model.init_from`` is not loaded (the file may be gone by then).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lightning_modules.resilience.resume_paths import (
    newest_file,
    resume_checkpoint_under,
    version_folder,
)


def last_checkpoint_of_config(config: Any) -> str | None:
    """What ``--ckpt_path last`` will resolve to, read off the parsed config before anything is built."""
    dirpath = config.get("checkpoint.dirpath")
    if dirpath:
        return newest_file(Path(dirpath).glob("last*.ckpt"))
    loggers = config.get("trainer.logger")
    first = loggers[0] if isinstance(loggers, list) and loggers else loggers
    init_args = first.get("init_args") if hasattr(first, "get") else None
    if init_args and str(first.get("class_path", "")).endswith("MLFlowLogger"):
        experiment = _mlflow_experiment_dir(init_args)
        return resume_checkpoint_under(experiment) if experiment is not None else None
    if not init_args or not init_args.get("save_dir"):
        return None
    # ModelCheckpoint's folder is <save_dir>/<logger.name>/<version>; a WandbLogger's name is its project
    name_key = "project" if str(first.get("class_path", "")).endswith("WandbLogger") else "name"
    run_dir = Path(init_args["save_dir"]) / str(init_args.get(name_key) or "lightning_logs")
    return resume_checkpoint_under(run_dir, version_folder(init_args.get("version")))


def _mlflow_experiment_dir(init_args: Any) -> Path | None:
    """``<store>/<experiment id>`` of an MLFlowLogger with a local file store, where its runs keep their checkpoints
    (``<run id>/checkpoints``). The logger's ``name`` is the experiment id, made when it is built: before that it
    is found by name in the experiments' ``meta.yaml``. None for a tracking server (the id is the server's)."""
    uri = init_args.get("tracking_uri") or f"file:{init_args.get('save_dir') or './mlruns'}"
    if not uri.startswith("file:"):
        return None
    name = init_args.get("experiment_name") or "lightning_logs"
    for meta in sorted(Path(uri[len("file:") :]).glob("*/meta.yaml")):
        try:
            if (yaml.safe_load(meta.read_text()) or {}).get("name") == name:
                return meta.parent
        except (OSError, yaml.YAMLError):  # a half-written or foreign folder is not this experiment
            continue
    return None
