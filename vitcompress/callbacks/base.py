"""The hooks of the one training loop (``vitcompress.training.fit``).

A ``Callback`` sees every optimizer step's loss and every epoch's metrics, on every rank, and may
keep state that is saved in each checkpoint and restored on ``--resume``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LoopState:
    """Where the loop stands: epochs and optimizer steps completed, and the per-epoch metrics."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    history: list = field(default_factory=list)


class Callback:
    """Hooks into the loop (called on every rank). Override what you need."""

    def on_train_begin(self, state: LoopState) -> None:
        """Before the first step (after a resume, with the restored state)."""

    def on_step(self, loss: float, step: int) -> None:
        """After every optimizer step: the step's loss (mean over ranks) and the global step."""

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        """After each epoch's evaluation and checkpoint; ``metrics`` holds train/val numbers."""

    def on_train_end(self, metrics: dict) -> None:
        """After the last epoch."""

    def status(self) -> dict[str, str]:
        """What the callback wants shown now, on the progress bar and each epoch's line ({} for nothing)."""
        return {}

    def state_dict(self) -> dict | None:
        """State saved in every checkpoint (None: nothing to save)."""
        return None

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned, when a run resumes."""
