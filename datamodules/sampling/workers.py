"""Loader worker processes: their random streams, their threads, their signals, and their end at interpreter exit.

The main process owns SIGINT/SIGTERM (it saves a checkpoint first), so workers ignore them; and because they
ignore SIGTERM, multiprocessing's own exit handler could not end them, so they are SIGKILLed at exit.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.util
import random
import signal
import threading

import cv2
import numpy as np
import torch
from torch.utils.data import get_worker_info


def seed_worker(worker_id: int) -> None:
    """Give each loader worker its own numpy/python random stream and one OpenCV thread, and make it ignore
    SIGINT/SIGTERM.

    Forked workers inherit identical generator states; without reseeding every worker would draw the same
    numbers from them. (The project's own augmentation draws per sample, see ``draws``.) A worker killed by
    a signal would abort the checkpoint the main process writes on it.

    The workers are the parallelism: as PyTorch gives each one torch thread, OpenCV gets one too, where its own
    pool would start a thread per core in every worker (and, even on two idle cores, costs about 3% more CPU
    per decoded-and-resized image; ``bench.loader_vs_timm`` runs with one thread of each).
    """
    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    info = get_worker_info()
    seed = (info.seed if info is not None else torch.initial_seed()) % 2**32
    np.random.seed(seed)
    random.seed(seed)
    dataset = info.dataset if info is not None else None
    reseed = getattr(dataset, "reseed", None)
    if callable(reseed):
        reseed(seed)


def kill_daemonic_children() -> None:
    """SIGKILL loader workers still alive at interpreter exit.

    multiprocessing ends daemonic children at exit with SIGTERM, which ``seed_worker`` makes them
    ignore, so a script or notebook that exits while a persistent-worker loader lives would hang.
    PyTorch's SIGCHLD handler, which reports dead workers of a running loader, is reset first.
    """
    workers = [child for child in multiprocessing.active_children() if child.daemon]
    if workers and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for worker in workers:
        worker.kill()


# runs before multiprocessing's own exit handler terminates and joins the children
multiprocessing.util.Finalize(None, kill_daemonic_children, exitpriority=100)
