"""Weights named ``hf-hub:org/name[@revision]``: files of a Hugging Face Hub repository, downloaded on first use.

Every file comes through ``huggingface_hub.hf_hub_download``, so its cache (``HF_HOME``, ``HF_HUB_CACHE``),
resumed downloads, token (``HF_TOKEN``, ``hf auth login``), ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` apply.
A repository holds timm's format (``config.json`` naming an ``architecture``) or this project's
(``config.json`` and ``model.safetensors`` written by ``export.py --format safetensors``). huggingface_hub is
imported only here, when such a name is used, so ``coatnet`` itself needs only PyTorch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import CheckpointError, first_line

HUB_PREFIX = "hf-hub:"
CONFIG_FILE = "config.json"
# Weights files a repository may hold, in the order they are tried (timm's older repositories have only the .bin).
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
EXAMPLE = "hf-hub:timm/coatnet_0_rw_224.sw_in1k"


def is_hub_name(source: object) -> bool:
    """Whether ``source`` names a Hub repository rather than a local file."""
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def repo_and_revision(name: str) -> tuple[str, str | None]:
    """``hf-hub:org/name@rev`` -> (``org/name``, ``rev``); the revision is None (the main branch) when not given."""
    repo_id, _, revision = name[len(HUB_PREFIX) :].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise CheckpointError(f"{name}: a Hub name is hf-hub:ORG/NAME[@REVISION], e.g. {EXAMPLE}")
    return repo_id, revision or None


def hub_config(name: str) -> dict[str, Any]:
    """The repository's ``config.json``: timm's (with ``architecture``) or this project's (with ``format``)."""
    path = _download(name, CONFIG_FILE)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{name}: {CONFIG_FILE} is not readable JSON ({first_line(err)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{name}: {CONFIG_FILE} holds no JSON object")
    return config


def hub_weights_file(name: str) -> Path:
    """The repository's weights file in the local cache: ``model.safetensors``, else ``pytorch_model.bin``."""
    for filename in WEIGHTS_FILES[:-1]:
        path = _download(name, filename, missing_ok=True)
        if path is not None:
            return path
    return _download(name, WEIGHTS_FILES[-1])


def _download(name: str, filename: str, missing_ok: bool = False) -> Path | None:
    """``hf_hub_download`` of one file, its errors as one line saying what to do; None if ``missing_ok`` and the
    repository has no such file."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, revision = repo_and_revision(name)
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except GatedRepoError:
        message = (f"{name} is gated: accept its terms on {constants.ENDPOINT}/{repo_id} and log in "
                   "(`hf auth login` or HF_TOKEN)")  # fmt: skip
    except RepositoryNotFoundError:
        message = (f"{name}: no repository {repo_id} on {constants.ENDPOINT} (or it is private: log in with "
                   f"`hf auth login` or set HF_TOKEN); check the name, e.g. {EXAMPLE}")  # fmt: skip
    except RevisionNotFoundError:
        message = f"{name}: {repo_id} has no revision {revision!r}; leave @REVISION out for the main branch"
    except LocalEntryNotFoundError:
        reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        message = (f"{name}: {filename} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {reason}: "
                   f"download it on a machine with internet with `hf download {repo_id}` and copy the cache "
                   "to this one (or point HF_HOME at it)")  # fmt: skip
    except EntryNotFoundError:
        if missing_ok:
            return None
        message = (f"{name}: {repo_id} has no {filename}; it is not a timm or CoAtNet weights repository "
                   f"(those hold {CONFIG_FILE} and {WEIGHTS_FILES[0]})")  # fmt: skip
    except HFValidationError as err:
        message = f"{name}: not a valid repository name ({first_line(err)})"
    except (HfHubHTTPError, OSError) as err:
        message = f"{name}: downloading {filename} from {constants.ENDPOINT} failed ({first_line(err)})"
    raise CheckpointError(message)
