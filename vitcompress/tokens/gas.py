"""Automatic token-pruning rate during fine-tuning (Gradient-Aware Scaling, GAS; our reading).

The rate is a state variable of the training run. Every ``interval`` optimizer steps the
controller compares the mean training loss of the window that just ended, ``L_t``, with the
previous window's, ``L_{t-1}``, as a relative slope ``s = (L_t - L_{t-1}) / L_{t-1}``, and moves
the rate by a step scaled by that slope::

    s <= tolerance  (loss falling or flat):  r <- r + clip(-gain * s, min_step, max_step)
    s >  tolerance  (loss rising):           r <- r - clip( gain * s, min_step, max_step)

then clamps ``r`` to ``[0, r_target]``, where ``r_target`` is the smallest rate whose schedule
removes the target share of MACs (``amount.amount_for_reduction``). So the rate climbs toward the
target while training absorbs each increase, faster when the loss falls fast, and backs off when
a step hurts. ``min_step`` keeps it moving once the loss has flattened. The rate is applied to
every reducing block of the schedule (``set_keep``), so the controller serves the keep/rate
reducers (``topk``, ``topk-vpa``, ``evit``, ``etps``); ``tome``'s merge counts are not a rate.

The controller is a ``vitcompress.training.Callback``: it plugs into the one training loop (``fit``)
and is checkpointed with it (``state_dict``), so ``--resume`` continues the same trajectory. The
mean loss it sees is already averaged over ranks, so every rank takes the same decisions.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from torch import nn

from ..errors import VitCompressError
from ..training import Callback, LoopState
from .amount import amount_for_reduction, current_amount, macs_reduction, with_amount


@dataclass
class GASConfig:
    """Hyperparameters of the rate controller (see the module docstring for the rule)."""

    target: float                 # MACs reduction to move toward (share of the width-pruned model's MACs)
    start: Optional[float] = None  # initial rate (default: the schedule's own)
    interval: int = 20            # optimizer steps per decision
    gain: float = 1.0             # rate change per unit of relative loss slope
    min_step: float = 0.005       # smallest change of the rate per decision
    max_step: float = 0.05        # largest change of the rate per decision
    tolerance: float = 0.0        # relative loss rise still treated as "not rising"

    def validate(self) -> "GASConfig":
        if not 0.0 < self.target < 1.0:
            raise VitCompressError(f"--gas-target {self.target} is outside (0, 1); use e.g. 0.3")
        if self.interval < 1:
            raise VitCompressError(f"GAS interval must be at least 1 step, got {self.interval}")
        if not 0.0 <= self.min_step <= self.max_step:
            raise VitCompressError("GAS steps need 0 <= min_step <= max_step")
        if self.start is not None and not 0.0 <= self.start < 1.0:
            raise VitCompressError(f"GAS start rate {self.start} is outside [0, 1)")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def gas_step(rate: float, slope: float, cfg: GASConfig, ceiling: float) -> float:
    """One decision: the new rate after a window whose relative loss slope was ``slope``."""
    if slope <= cfg.tolerance:
        delta = min(cfg.max_step, max(cfg.min_step, -cfg.gain * slope))
    else:
        delta = -min(cfg.max_step, max(cfg.min_step, cfg.gain * slope))
    return min(ceiling, max(0.0, rate + delta))


class GASController(Callback):
    """Raises a model's token-pruning rate while the training loss falls, lowers it when it rises."""

    def __init__(self, model: nn.Module, cfg: GASConfig):
        from .apply import schedule_of

        self.cfg = cfg.validate()
        self.model = model
        sched = schedule_of(model)
        if sched is None:
            raise VitCompressError("automatic rate adjustment needs a token-reduced model; apply a schedule "
                                   "first (vitcompress tokens ... --method topk-vpa --schedule rate=0.02)")
        if sched.kind == "merge":
            raise VitCompressError("automatic rate adjustment moves a pruning rate, and tome merges a fixed count; "
                                   "use topk-vpa, etps, evit or topk with a rate= or KEEP@BLOCKS schedule")
        self.ceiling = amount_for_reduction(model, sched, cfg.target)
        self.rate = current_amount(sched) if cfg.start is None else float(cfg.start)
        self.rate = min(self.rate, self.ceiling)
        self.window: list[float] = []
        self.prev: Optional[float] = None
        self.trajectory: list[dict] = []
        self.log = {"config": cfg.to_dict(), "ceiling": self.ceiling, "trajectory": self.trajectory}
        self._apply()

    # ------------------------------------------------------------------ the loop's hooks
    def on_train_begin(self, state: LoopState) -> None:
        self._apply()
        if not self.trajectory:
            self._record(state.step, None)

    def on_step(self, loss: float, step: int) -> None:
        self.window.append(float(loss))
        if len(self.window) < self.cfg.interval:
            return
        mean = sum(self.window) / len(self.window)
        self.window = []
        if self.prev is not None:
            slope = (mean - self.prev) / max(abs(self.prev), 1e-12)
            self.rate = gas_step(self.rate, slope, self.cfg, self.ceiling)
            self._apply()
        self.prev = mean
        self._record(step, mean)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return {"rate": self.rate, "window": list(self.window), "prev": self.prev,
                "trajectory": list(self.trajectory)}

    def load_state_dict(self, state: dict) -> None:
        self.rate = float(state["rate"])
        self.window = list(state["window"])
        self.prev = state["prev"]
        self.trajectory[:] = state["trajectory"]
        self._apply()

    # ------------------------------------------------------------------ helpers
    @property
    def macs_reduction(self) -> float:
        from .apply import schedule_of

        return macs_reduction(self.model, schedule_of(self.model))

    def _apply(self) -> None:
        from .apply import set_keep

        set_keep(self.model, round(1.0 - self.rate, 6))

    def _record(self, step: int, loss: Optional[float]) -> None:
        self.trajectory.append({"step": int(step), "loss": loss, "rate": round(self.rate, 6),
                                "macs_reduction": round(self.macs_reduction, 6)})
