"""Shared test helpers: the repository root, a quiet environment for subprocesses, and ``run_cli``.

Other test modules may ``from conftest import run_cli, subprocess_env, free_port, REPO_ROOT``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn

TESTS_DIR = Path(__file__).resolve().parent  # the shared helpers (data_helpers, step_marker, ...) live here
REPO_ROOT = TESTS_DIR.parent
TIER_DIRS = (TESTS_DIR / "unit", TESTS_DIR / "e2e", TESTS_DIR / "perf")
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# The suite's models are tiny and CI has 2 cores: one intra-op thread per process avoids threads
# spinning against each other (and against subprocesses), which made small fits ~10x slower.
torch.set_num_threads(1)
if str(REPO_ROOT) not in sys.path:  # makes the top-level ``cli.py`` importable in tests
    sys.path.insert(0, str(REPO_ROOT))


def subprocess_env(threads: int = 1, **extra: str) -> dict[str, str]:
    """Environment for child processes: repo and test modules importable, albumentations offline, bounded CPU
    threads."""
    env = dict(os.environ)
    importable = [REPO_ROOT, TESTS_DIR, *TIER_DIRS]  # the project, the shared helpers, and test modules by name
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*map(str, importable), env.get("PYTHONPATH", "")]))
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONWARNINGS"] = "ignore"
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (for torch.distributed rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(
    args: Sequence[str],
    cwd: Path | str | None = None,
    threads: int = 1,
    timeout: float = 300,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python cli.py *args`` in a subprocess; with ``check``, fail the test with the output tail."""
    cmd = [sys.executable, str(REPO_ROOT / "cli.py"), *map(str, args)]
    proc = subprocess.run(
        cmd,
        cwd=cwd or REPO_ROOT,
        env=env or subprocess_env(threads),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (where ``cli.py`` and ``configs/`` live)."""
    return REPO_ROOT


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so that folding is not an identity map."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            channels = norm.num_features
            norm.running_mean.copy_(torch.randn(channels, generator=generator) * 0.5)
            norm.running_var.copy_(torch.rand(channels, generator=generator) * 2 + 0.1)
            norm.weight.copy_(torch.randn(channels, generator=generator) * 0.5 + 1)
            norm.bias.copy_(torch.randn(channels, generator=generator) * 0.2)
    return model


@contextmanager
def registered_block(letter: str, block: type) -> Iterator[str]:
    """``block`` is layout letter ``letter`` inside the block only: ``coatnet.blocks.BLOCKS`` is process-wide."""
    from coatnet.blocks import BLOCKS, register_block

    register_block(letter)(block)
    try:
        yield letter
    finally:
        BLOCKS.pop(letter)
        block.letter = ""


def small_layout_model(layout: str) -> nn.Module:
    """A four-stage ``layout`` at toy widths and depths (32x32 input, 4 classes): for registered toy blocks."""
    from coatnet import create_model

    return create_model(
        "coatnet_nano", layout=layout, widths=(16, 32, 32, 64), depths=(1, 2, 1, 1), img_size=32, num_classes=4,
        stem={"widths": (16, 16)}, transformer={"head_dim": 16},
    )  # fmt: skip
