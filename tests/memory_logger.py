"""A Lightning logger that keeps what it is given in memory, for tests that check what reaches loggers."""

from __future__ import annotations

from lightning.pytorch.loggers import Logger


class MemoryLogger(Logger):
    """Every ``log_metrics`` call as (step, metrics), in order; ``written`` merges them per step."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    @property
    def written(self) -> dict[int | None, dict[str, float]]:
        merged: dict[int | None, dict[str, float]] = {}
        for step, metrics in self.calls:
            merged.setdefault(step, {}).update(metrics)
        return merged

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass
