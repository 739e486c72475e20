"""``hf-hub:org/name`` weights: downloaded through huggingface_hub (its cache, HF_ENDPOINT, HF_HUB_OFFLINE),
converted from timm's format, loaded with their preprocessing; clear one-line errors. Never the network: a
cache laid out as the Hub's, or a server on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, subprocess_env
from hub_helpers import (
    CLASSES,
    IMG,
    TIMM_NAME,
    TIMM_REPO,
    FakeHub,
    cache_repo,
    point_hub_client_at,
    timm_repo_files,
)

from coatnet import create_model
from coatnet.convert import convert_timm_state_dict
from coatnet.errors import CheckpointError
from coatnet.weights import (
    load_for_finetune,
    load_state_dict_file,
    load_weights,
    preprocessing_of,
    read_safetensors,
)

HUB_NAME = f"hf-hub:{TIMM_REPO}"


@pytest.fixture(scope="module")
def timm_files(tmp_path_factory) -> dict[str, bytes]:
    return timm_repo_files(tmp_path_factory.mktemp("timm_repo"))


@pytest.fixture(scope="module")
def expected(timm_files, tmp_path_factory) -> torch.nn.Module:
    """The same weights converted from a local file, as `python -m coatnet convert --input FILE` does."""
    path = tmp_path_factory.mktemp("local") / "model.safetensors"
    path.write_bytes(timm_files["model.safetensors"])
    return convert_timm_state_dict(load_state_dict_file(path), TIMM_NAME)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hub cache for this process, offline (HF_HUB_OFFLINE=1 as huggingface_hub read it at import)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def endpoint(monkeypatch):
    """Point this process's huggingface_hub at a FakeHub: ``endpoint(hub)`` -> its URL, while the test runs."""
    servers = []

    def serve(hub: FakeHub) -> str:
        context = hub.serving()
        url = context.__enter__()
        servers.append(context)
        point_hub_client_at(monkeypatch, url)
        return url

    yield serve
    for context in servers:
        context.__exit__(None, None, None)


def _convert(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "coatnet", "convert", *args],
        cwd=REPO_ROOT, env=subprocess_env(**env), capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def test_convert_downloads_through_hf_endpoint_then_works_offline_from_the_cache(timm_files, expected, tmp_path):
    hub = FakeHub({TIMM_REPO: timm_files})
    home = tmp_path / "hf_home"
    with hub.serving() as url:
        online = _convert("--input", HUB_NAME, "--output", str(tmp_path / "a.safetensors"),
                          HF_ENDPOINT=url, HF_HOME=str(home))  # fmt: skip
    assert online.returncode == 0, online.stderr
    assert f"/{TIMM_REPO}/resolve/main/model.safetensors" in hub.requests
    assert f"converted timm {TIMM_NAME}.sw_in1k" in online.stdout
    offline = _convert("--input", HUB_NAME, "--output", str(tmp_path / "b.safetensors"),
                       HF_HUB_OFFLINE="1", HF_HOME=str(home))  # fmt: skip
    assert offline.returncode == 0, offline.stderr
    for name in ("a", "b"):
        model, meta = load_weights(tmp_path / f"{name}.safetensors")
        assert meta["variant"] == "coatnet_nano_rw" and meta["source"]["hf_hub"] == TIMM_REPO
        assert meta["preprocessing"]["crop_pct"] == 0.9 and model.config.num_classes == CLASSES
        assert all(torch.equal(v, expected.state_dict()[k]) for k, v in model.state_dict().items())


def test_init_from_a_hub_name_converts_and_loads_with_the_stated_preprocessing(timm_files, expected, hub_cache):
    cache_repo(hub_cache, TIMM_REPO, timm_files)
    assert preprocessing_of(HUB_NAME) == {"mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic",
                                          "crop_pct": 0.9}  # fmt: skip
    model = create_model("coatnet_nano_rw", num_classes=3, img_size=IMG)
    report = load_for_finetune(model, HUB_NAME)
    assert report.reinitialised == ["head.fc.weight", "head.fc.bias"]
    source = expected.state_dict()
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items() if not k.startswith("head.fc."))


def test_a_repository_in_this_projects_format_loads_as_is(expected, hub_cache, tmp_path):
    from coatnet.weights import save_weights

    pre = {"mean": (0.1, 0.2, 0.3), "std": (0.4, 0.5, 0.6), "interpolation": "bilinear", "crop_pct": 1.0}
    path = save_weights(tmp_path / "model.safetensors", expected, pre, "test", variant="coatnet_nano_rw",
                        class_names=[f"c{i}" for i in range(CLASSES)])  # fmt: skip
    config = json.dumps({"format": read_safetensors(path)[1]["format"]}).encode()
    cache_repo(hub_cache, "me/nano", {"config.json": config, "model.safetensors": path.read_bytes()})
    model, meta = load_weights("hf-hub:me/nano")
    assert meta["class_names"][-1] == "c9" and preprocessing_of("hf-hub:me/nano")["std"] == (0.4, 0.5, 0.6)
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in model.state_dict().items())


def test_nothing_cached_while_offline_says_how_to_download_first(hub_cache):
    with pytest.raises(CheckpointError) as err:
        load_weights(HUB_NAME)
    message = str(err.value)
    assert "HF_HUB_OFFLINE is set" in message and f"hf download {TIMM_REPO}" in message and "\n" not in message


def test_an_unknown_repository_is_named(endpoint):
    url = endpoint(FakeHub({}))
    with pytest.raises(CheckpointError, match=rf"^hf-hub:timm/nope: no repository timm/nope on {url} "):
        preprocessing_of("hf-hub:timm/nope")


def test_an_unsupported_timm_architecture_is_refused_before_its_weights_download(timm_files, endpoint):
    files = {**timm_files, "config.json": timm_files["config.json"].replace(TIMM_NAME.encode(), b"maxvit_tiny_tf_224")}
    hub = FakeHub({"timm/maxvit_tiny_tf_224.in1k": files})
    endpoint(hub)
    with pytest.raises(CheckpointError, match="no CoAtNet variant for timm model 'maxvit_tiny_tf_224'; supported: "):
        load_for_finetune(create_model("coatnet_nano_rw", img_size=IMG), "hf-hub:timm/maxvit_tiny_tf_224.in1k")
    assert not any(path.endswith("model.safetensors") for path in hub.requests)


@pytest.mark.parametrize("name", ["hf-hub:coatnet_0_rw_224", "hf-hub:a/b/c", "hf-hub:/x"])
def test_a_malformed_hub_name_shows_the_form(name):
    with pytest.raises(CheckpointError, match=r"a Hub name is hf-hub:ORG/NAME\[@REVISION\], e.g. hf-hub:timm/"):
        load_weights(name)


def test_conversion_shows_a_progress_bar_when_it_takes_noticeable_time(timm_files, hub_cache, monkeypatch, capsys):
    """The bar appears after a second (tqdm's delay); here the delay is 0 so that it shows on any machine."""
    from tqdm import tqdm

    from coatnet import convert

    monkeypatch.setattr(convert, "tqdm", lambda *args, **kwargs: tqdm(*args, **{**kwargs, "delay": 0}))
    cache_repo(hub_cache, TIMM_REPO, timm_files)
    load_weights(HUB_NAME)
    err = capsys.readouterr().err
    assert f"converting {TIMM_NAME}.sw_in1k: 100%" in err and "3/3" in err


def test_export_takes_a_hub_name(timm_files, expected, hub_cache):
    from lightning_modules import export

    cache_repo(hub_cache, TIMM_REPO, timm_files)
    model, info = export.load_checkpoint(HUB_NAME)
    assert info["image_size"] == [IMG, IMG] and info["crop_pct"] == 0.9 and info["variant"] == "coatnet_nano_rw"
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_timm_repository_with_only_pytorch_model_bin_loads(timm_files, expected, endpoint, tmp_path):
    """timm's older repositories have no model.safetensors; the .bin is read with weights_only=True."""
    from safetensors.torch import load

    torch.save(load(timm_files["model.safetensors"]), tmp_path / "pytorch_model.bin")
    files = {
        "config.json": timm_files["config.json"],
        "pytorch_model.bin": (tmp_path / "pytorch_model.bin").read_bytes(),
    }
    endpoint(FakeHub({TIMM_REPO: files}))
    model, _ = load_weights(HUB_NAME)
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in model.state_dict().items())
