"""Each always-present callback's config key says what its class is called (``nan_guard:`` -> ``NanGuard``)."""

from __future__ import annotations

from lightning.pytorch import Callback

import cli

QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]


def camel(key: str) -> str:
    return "".join(part.capitalize() for part in key.split("_"))


def test_config_keys_name_their_callback_classes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parsed = cli.CoAtNetCLI(args=["--config", "smoke.yaml", *QUIET], run=False).config_init
    callbacks = {key: value for key, value in parsed.items() if isinstance(value, Callback)}
    assert {"checkpoint", "nan_guard", "random_state", "run_lock", "pictures"} <= callbacks.keys()
    own = {
        key: type(value).__name__
        for key, value in callbacks.items()
        if type(value).__module__.startswith("lightning_modules")
    }
    misnamed = {key: name for key, name in own.items() if camel(key) not in name}
    assert not misnamed, f"config key -> class name: {misnamed}"
