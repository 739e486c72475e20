"""``export.py --format safetensors``: a run's checkpoint becomes a shareable folder (weights with variant, classes and
preprocessing; config.json; a model card), optionally uploaded; ``init_from`` and export read it back."""

from __future__ import annotations

import json

import pytest
import torch
from hub_helpers import FakeHub, cache_repo, point_hub_client_at

from coatnet import create_model
from coatnet.weights import load_for_finetune, load_weights, preprocessing_of
from lightning_modules import export

INFO = {"class_names": ["cat", "dog", "eel"], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3], "image_size": [32, 32],
        "resize": "center_crop", "crop_pct": 0.875, "interpolation": "bilinear"}  # fmt: skip
PREPROCESSING = {"mean": (0.4, 0.5, 0.6), "std": (0.2, 0.25, 0.3), "interpolation": "bilinear", "crop_pct": 0.875}
CONFIG_YAML = "model:\n  model_name: coatnet_nano\n  num_classes: 3\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder as cli.py leaves it: VERSION/config.yaml and VERSION/checkpoints/best.ckpt (with the
    ModelCheckpoint state, optimizer-free for size); returns (checkpoint path, network)."""
    torch.manual_seed(0)
    model = create_model("coatnet_nano", num_classes=3, img_size=32)
    version = tmp_path_factory.mktemp("version_0")
    (version / "config.yaml").write_text(CONFIG_YAML)
    (version / "checkpoints").mkdir()
    state = {
        "epoch": 4, "global_step": 120,
        "hyper_parameters": {"model_name": "coatnet_nano", "num_classes": 3, "image_size": (32, 32)},
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "data_info": INFO,
        "callbacks": {"ModelCheckpoint{'monitor': 'val/acc1', 'mode': 'max'}": {
            "monitor": "val/acc1", "best_model_score": torch.tensor(0.8125), "best_model_path": "x"}},
    }  # fmt: skip
    torch.save(state, version / "checkpoints" / "best.ckpt")
    return version / "checkpoints" / "best.ckpt", model.eval()


def _pack(ckpt, output, *extra: str) -> int:
    return export.run(["--ckpt", str(ckpt), "--format", "safetensors", "--output", str(output), *extra])


def test_a_checkpoint_packs_into_weights_config_and_card(run, tmp_path):
    ckpt, _ = run
    assert _pack(ckpt, tmp_path / "packed") == 0
    assert sorted(p.name for p in (tmp_path / "packed").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "packed" / "config.json").read_text())
    assert config["variant"] == "coatnet_nano" and config["class_names"] == INFO["class_names"]
    assert config["preprocessing"] == {**PREPROCESSING, "mean": INFO["mean"], "std": INFO["std"]}
    assert config["source"]["epoch"] == 4 and config["source"]["global_step"] == 120
    card = (tmp_path / "packed" / "README.md").read_text()
    assert "| best val/acc1 | 0.8125 |" in card and CONFIG_YAML in card  # metrics and the run's config
    assert f"python export.py --ckpt {ckpt} --format safetensors --output {tmp_path / 'packed'}" in card  # command
    assert f"--model.init_from {tmp_path / 'packed'}" in card


def test_init_from_and_export_read_the_packed_folder_back(run, tmp_path):
    ckpt, trained = run
    _pack(ckpt, tmp_path / "packed")
    assert preprocessing_of(tmp_path / "packed") == PREPROCESSING
    model, meta = load_weights(tmp_path / "packed")
    assert meta["class_names"] == INFO["class_names"]
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())
    target = create_model("coatnet_nano", num_classes=5, img_size=64)  # other classes and size: a fine-tune
    report = load_for_finetune(target, tmp_path / "packed")
    assert report.reinitialised == ["head.fc.weight", "head.fc.bias"] and len(report.resized) > 0
    exported, info = export.load_checkpoint(tmp_path / "packed")
    assert info["class_names"] == INFO["class_names"] and info["variant"] == "coatnet_nano"
    assert torch.equal(exported(torch.ones(1, 3, 32, 32)), trained(torch.ones(1, 3, 32, 32)))


def test_an_uploaded_folder_reads_back_as_a_hub_repository(run, tmp_path, monkeypatch):
    from huggingface_hub import constants

    ckpt, trained = run
    _pack(ckpt, tmp_path / "packed")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cache_repo(tmp_path / "hub", "me/nano-run", {p.name: p.read_bytes() for p in (tmp_path / "packed").iterdir()})
    model, meta = load_weights("hf-hub:me/nano-run")
    assert meta["variant"] == "coatnet_nano" and preprocessing_of("hf-hub:me/nano-run") == PREPROCESSING
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())


def test_push_to_hub_uploads_the_folder_which_then_loads_from_the_hub(run, tmp_path, monkeypatch, capsys):
    """Through huggingface_hub's HfApi against a Hub on 127.0.0.1: create the repository, commit the folder;
    then `init_from hf-hub:` downloads it back."""
    from huggingface_hub import constants

    ckpt, trained = run
    hub = FakeHub({})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with hub.serving() as url:
        point_hub_client_at(monkeypatch, url)
        assert _pack(ckpt, tmp_path / "packed", "--push-to-hub", "me/nano-run", "--private") == 0
        assert "--model.init_from hf-hub:me/nano-run" in capsys.readouterr().out
        model, meta = load_weights("hf-hub:me/nano-run")
    (created,) = hub.created
    assert (created["organization"], created["name"]) == ("me", "nano-run")
    assert created.get("visibility") == "private" or created.get("private") is True
    uploaded = hub.repos["me/nano-run"]
    assert uploaded == {p.name: p.read_bytes() for p in (tmp_path / "packed").iterdir()}
    assert b"--model.init_from hf-hub:me/nano-run" in uploaded["README.md"]
    assert meta["class_names"] == INFO["class_names"]
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_failed_upload_is_one_line_and_keeps_the_folder(run, tmp_path, monkeypatch, capsys):
    with FakeHub({}, refuse_uploads=True).serving() as url, pytest.raises(SystemExit) as exited:
        point_hub_client_at(monkeypatch, url)
        export.main(["--ckpt", str(run[0]), "--format", "safetensors", "--output", str(tmp_path / "p"),
                     "--push-to-hub", "me/x"])  # fmt: skip
    err = capsys.readouterr().err.splitlines()
    assert exited.value.code == 2
    assert err[0].startswith(f"error: uploading {tmp_path / 'p'} to me/x failed (HfHubHTTPError: ") and "401" in err[0]
    assert "hf auth login" in err[0] and (tmp_path / "p" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--check"], "--format safetensors packs the weights of --ckpt as trained"),
        (["--format", "onnx", "--push-to-hub", "me/x"], "--push-to-hub uploads a packed folder"),
    ],
)
def test_pack_options_are_checked_when_parsing(run, tmp_path, capsys, extra, words):
    argv = ["--ckpt", str(run[0]), "--format", "safetensors", "--output", str(tmp_path / "p"), *extra]
    with pytest.raises(SystemExit):
        export.parse_args(argv)
    assert words in capsys.readouterr().err and not any(tmp_path.iterdir())
