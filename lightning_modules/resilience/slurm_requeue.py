"""``scontrol requeue`` of the SLURM job this process runs in, so a job stopped before its time limit runs again.

Lightning's own auto-requeue (``SLURMEnvironment``) is not used: it saves ``hpc_ckpt_N.ckpt`` into
``default_root_dir`` from inside the signal handler, in the middle of a step, where ``--ckpt_path last``
never looks. ``InterruptCheckpoint(requeue_on=...)`` instead saves ``last.ckpt`` at a step boundary and
then calls :func:`requeue` on rank 0; it handles the signal before Lightning would, so Lightning's is never
installed.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping


def slurm_job_id(environ: Mapping[str, str] = os.environ) -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for an array task, else ``SLURM_JOB_ID``."""
    array_job, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return environ.get("SLURM_JOB_ID") or None


def requeue(job_id: str) -> str:
    """Run ``scontrol requeue job_id``; the line that says what happened."""
    try:
        done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"SLURM job {job_id} NOT requeued ({err}); resubmit it"
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        return f"SLURM job {job_id} NOT requeued (scontrol: {reason}); resubmit it"
    return f"requeued SLURM job {job_id}: it resumes from last.ckpt when it starts again"
