"""Checked, atomic download and path-safe archive extraction."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from datamodules.errors import DatasetError
from datamodules.sources.progress import progress_bar

CHUNK_BYTES = 1 << 20


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str | None, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` via a temp file in the same folder; rename only after the MD5 matches.

    A partial or corrupted download therefore never sits at ``dest``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with progress_bar(total, f"downloading {dest.name}", unit="B", unit_scale=True, unit_divisor=1024) as bar:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise DatasetError(
            f"download of {url} failed ({exc}). Check the network/URL, or place {dest.name} in {dest.parent} yourself."
        ) from None
    if md5 is not None and digest.hexdigest() != md5:
        tmp.unlink(missing_ok=True)
        raise DatasetError(
            f"checksum mismatch for {url}: expected md5 {md5}, got {digest.hexdigest()}; the download was deleted. "
            "Retry (the transfer may have been cut), or fix the URL/md5 settings."
        )
    os.replace(tmp, dest)
    return dest


def _check_member(member: tarfile.TarInfo, dest: Path) -> None:
    target = (dest / member.name).resolve()
    if not target.is_relative_to(dest) or not (member.isfile() or member.isdir()):
        raise DatasetError(
            f"refusing to extract unsafe archive entry {member.name!r} (links, devices and paths outside "
            f"{dest} are not allowed); the archive is not the expected dataset."
        )


def _top_level(name: str) -> str:
    parts = [part for part in name.split("/") if part not in ("", ".")]
    return parts[0] if parts else "."


def _check_inside_folder(member: tarfile.TarInfo, archive: Path, dest: Path, folder: str) -> None:
    """The archive may only hold ``folder``: extracting anything else would create or replace other entries
    of ``dest`` (a user's own folder of the same name, say)."""
    if _top_level(member.name) != folder:
        raise DatasetError(
            f"{archive} holds {member.name!r}, outside {folder}/; extraction only creates or replaces {dest / folder}, "
            "so nothing was extracted. Use the official archive (check download_url), or unpack it yourself."
        )


def safe_extract(archive: Path, dest: Path, folder: str) -> None:
    """Extract a tar(.gz) whose entries all lie in ``folder`` into ``dest/folder``, atomically: into a temp dir,
    then that one folder is moved into place (replacing an old, incomplete copy).

    Every entry must be a plain file or folder under ``folder``; nothing is extracted otherwise.
    """
    dest = dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract.", dir=dest))
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, staging.resolve())
                _check_inside_folder(member, archive, dest, folder)
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            for member in members:
                tar.extract(member, staging, set_attrs=False, **extra)
        target = dest / folder
        if (staging / folder).is_dir():
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(staging / folder, target)
    except (tarfile.TarError, EOFError) as exc:
        raise DatasetError(f"cannot read archive {archive} ({exc}); delete it and download again.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
