"""A Hugging Face Hub without the network: repositories laid out in a local cache as huggingface_hub lays
them out, and a tiny HTTP server on 127.0.0.1 that answers ``hf_hub_download`` and ``HfApi`` uploads (repository
creation, then a commit of regular, base64-encoded files) as the Hub does."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

TIMM_REPO = "timm/coatnet_nano_rw_224.sw_in1k"
TIMM_NAME = "coatnet_nano_rw_224"
IMG, CLASSES = 64, 10  # timm's nano_rw at 64 px: its full depth (the conversion checks it), small tables


def timm_repo_files(folder: Path, architecture: str = TIMM_NAME) -> dict[str, bytes]:
    """``config.json`` and ``model.safetensors`` as timm's ``push_to_hub`` writes them, of random weights."""
    import timm
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=CLASSES, img_size=IMG)
    save_config_for_hf(model, str(folder / "config.json"))
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = architecture
    generator = torch.Generator().manual_seed(0)
    state_dict = {k: torch.randn(v.shape, generator=generator).to(v.dtype) for k, v in model.state_dict().items()}
    save_file(state_dict, str(folder / "model.safetensors"))
    weights = (folder / "model.safetensors").read_bytes()
    return {"config.json": json.dumps(config).encode(), "model.safetensors": weights}


def commit_of(files: dict[str, bytes]) -> str:
    return hashlib.sha1(b"".join(files.values())).hexdigest()


def cache_repo(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Files in ``cache`` (HF_HUB_CACHE) as a download of ``repo_id``'s main branch leaves them; the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = commit_of(files)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (snapshot / name).write_bytes(content)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def point_hub_client_at(monkeypatch, url: str) -> None:
    """Make this process's huggingface_hub use ``url`` as HF_ENDPOINT (it reads the variable at import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


class FakeHub:
    """``/{repo}/resolve/{revision}/{file}`` for the repositories given; records the paths asked for. Uploads
    land in ``repos`` too (``created`` records each repository creation request); ``refuse_uploads`` answers 401."""

    def __init__(self, repos: dict[str, dict[str, bytes]], refuse_uploads: bool = False):
        self.repos = repos
        self.requests: list[str] = []
        self.created: list[dict] = []
        self.refuse_uploads = refuse_uploads

    @contextmanager
    def serving(self) -> Iterator[str]:
        """The endpoint (``http://127.0.0.1:PORT``) while the server runs."""
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def do_POST(self) -> None:
                hub.requests.append(self.path)
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if hub.refuse_uploads:
                    return self._json(401, {"error": "Invalid credentials in Authorization header"})
                if self.path == "/api/repos/create":
                    request = json.loads(data)
                    hub.created.append(request)
                    repo_id = f"{request['organization']}/{request['name']}"
                    hub.repos.setdefault(repo_id, {})
                    return self._json(200, {"url": f"{url}/{repo_id}"})
                if self.path == "/api/validate-yaml":  # a README.md's metadata block, checked before the commit
                    return self._json(200, {"errors": [], "warnings": []})
                repo_id, _, action = self.path.removeprefix("/api/models/").rpartition("/")[0].rpartition("/")
                if action == "preupload":
                    files = json.loads(data)["files"]
                    modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self._json(200, {"files": modes})
                for line in data.splitlines():  # commit: a header line, then one line per file
                    entry = json.loads(line)
                    if entry.get("key") == "file":
                        hub.repos[repo_id][entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                commit = commit_of(hub.repos[repo_id])
                return self._json(200, {"commitUrl": f"{url}/{repo_id}/commit/{commit}", "commitOid": commit})

            def _json(self, status: int, answer: dict) -> None:
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _answer(self, body: bool) -> None:
                hub.requests.append(self.path)
                repo_id, _, rest = self.path.lstrip("/").partition("/resolve/")
                _revision, _, filename = rest.partition("/")
                files = hub.repos.get(repo_id)
                content = None if files is None else files.get(filename)
                if files is None or content is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound" if files is None else "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit_of(files))
                self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if body:
                    self.wfile.write(content)

            def log_message(self, *args: object) -> None:  # quiet test output
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield url
        finally:
            server.shutdown()
            server.server_close()
