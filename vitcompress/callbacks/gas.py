"""Automatic token-pruning rate during fine-tuning (Gradient-Aware Scaling, GAS; our reading).

The rate is a state variable of the training run. The controller smooths the per-step training
loss with an exponential moving average (``L <- ema L + (1 - ema) loss``: single steps are far
too noisy to steer by), and every ``interval`` optimizer steps compares the smoothed loss with its
value ``interval`` steps earlier as a relative slope ``s = (L_t - L_{t-1}) / L_{t-1}``, then moves
the rate by a step scaled by that slope::

    s <= tolerance  (loss falling, flat or within noise):  r <- r + clip(-gain * s, min_step, max_step)
    s >  tolerance  (loss rising), ``patience`` times in a row:  r <- r - clip(gain * s, min_step, max_step)
    s >  tolerance, fewer times in a row:                  r unchanged

A raise of the rate makes the loss jump before training absorbs it; ``patience`` (default 2)
gives the model one decision interval to recover before the controller backs off.

then clamps ``r`` to ``[0, r_target]``, where ``r_target`` is the smallest rate whose schedule
removes the target share of MACs (``tokens.amount.amount_for_reduction``). So the rate climbs toward the
target while training absorbs each increase, faster when the loss falls fast, and backs off when
a step hurts. ``min_step`` keeps it moving once the loss has flattened. The rate is applied to
every reducing block of the schedule (``set_keep``), so the controller serves the keep/rate
reducers (``topk``, ``topk-vpa``, ``evit``, ``etps``); ``tome``'s merge counts are not a rate.

The controller is a training ``Callback``: it plugs into the one training loop (``fit``)
and is checkpointed with it (``state_dict``), so ``--resume`` continues the same trajectory. The
mean loss it sees is already averaged over ranks, so every rank takes the same decisions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from ..config import check_fields, check_number, setting
from ..errors import VitCompressError
from ..tokens.amount import amount_for_reduction, current_amount, macs_reduction
from ..tokens.apply import schedule_of, set_keep
from .base import Callback, LoopState


@dataclass
class GASConfig:
    """Hyperparameters of the rate controller (see the module docstring for the rule)."""

    target: float = setting(
        help="Token-reduced model: adjust its pruning rate while training, toward this MACs reduction (GAS)."
    )
    start: float | None = setting(None, "GAS: initial pruning rate (default: the schedule's own).")
    interval: int = setting(20, "GAS: optimizer steps per rate decision.", ge=1, le=2**31)
    gain: float = setting(0.5, "GAS: rate change per unit of relative loss slope.", ge=0, le=1e6)
    min_step: float = setting(0.005, "GAS: smallest change of the rate per decision.", ge=0, le=1)
    max_step: float = setting(0.02, "GAS: largest change of the rate per decision.", ge=0, le=1)
    tolerance: float = setting(0.02, "GAS: relative rise of the smoothed loss still treated as noise.", ge=0, le=1e6)
    ema: float = setting(0.9, "GAS: smoothing of the per-step loss.", ge=0, lt=1)
    patience: int = setting(2, "GAS: rising decisions in a row before the rate is lowered.", ge=1, le=2**31)

    def validate(self) -> GASConfig:
        """One-line ``VitCompressError`` for a value that is not a finite number in its range."""
        if self.target is None:
            raise VitCompressError("GAS needs a target MACs reduction; pass target=0.3 for example", params=["target"])
        check_number("target", self.target)
        if not 0.0 < self.target < 1.0:
            raise VitCompressError(f"GAS target={self.target} is outside (0, 1); use e.g. 0.3", params=["target"])
        check_fields(self)
        if self.patience < 1:
            raise VitCompressError(f"GAS patience must be at least 1, got {self.patience}", params=["patience"])
        if self.interval < 1:
            raise VitCompressError(f"GAS interval must be at least 1 step, got {self.interval}", params=["interval"])
        if not 0.0 <= self.ema < 1.0:
            raise VitCompressError(f"GAS ema must be in [0, 1), got {self.ema}", params=["ema"])
        if not 0.0 <= self.min_step <= self.max_step:
            raise VitCompressError("GAS steps need 0 <= min_step <= max_step", params=["min_step", "max_step"])
        if self.start is not None and not 0.0 <= self.start < 1.0:
            raise VitCompressError(f"GAS start rate {self.start} is outside [0, 1)", params=["start"])
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def gas_step(rate: float, slope: float, cfg: GASConfig, ceiling: float, rises: int = 1) -> float:
    """One decision: the new rate after a window whose relative loss slope was ``slope``
    (``rises``: how many decisions in a row, this one included, saw the loss rise)."""
    if slope <= cfg.tolerance:
        delta = min(cfg.max_step, max(cfg.min_step, -cfg.gain * slope))
    elif rises >= cfg.patience:
        delta = -min(cfg.max_step, max(cfg.min_step, cfg.gain * slope))
    else:
        delta = 0.0
    return min(ceiling, max(0.0, rate + delta))


class GASController(Callback):
    """Raises a model's token-pruning rate while the training loss falls, lowers it when it rises."""

    def __init__(self, model: nn.Module, cfg: GASConfig):
        self.cfg = cfg.validate()
        self.model = model
        sched = schedule_of(model)
        if sched is None:
            raise VitCompressError(
                "automatic rate adjustment needs a token-reduced model; apply a schedule first "
                "(apply_tokens(model, 'rate=0.02', method='topk-vpa'), or vitcompress tokens for an artifact)"
            )
        if sched.kind == "merge":
            raise VitCompressError(
                "automatic rate adjustment moves a pruning rate, and tome merges a fixed count; "
                "use topk-vpa, etps, evit or topk with a rate= or KEEP@BLOCKS schedule"
            )
        self.ceiling = amount_for_reduction(model, sched, cfg.target)
        self.rate = current_amount(sched) if cfg.start is None else float(cfg.start)
        self.rate = min(self.rate, self.ceiling)
        self.steps = 0  # steps since the last decision
        self.rises = 0  # rising decisions in a row
        self.smooth: float | None = None  # the smoothed loss
        self.prev: float | None = None  # the smoothed loss at the last decision
        self.trajectory: list[dict] = []
        self.log = {"config": cfg.to_dict(), "ceiling": self.ceiling, "trajectory": self.trajectory}
        self._apply()

    # ------------------------------------------------------------------ the loop's hooks
    def on_train_begin(self, state: LoopState) -> None:
        self._apply()
        if not self.trajectory:
            self._record(state.step, None)

    def on_step(self, loss: float, step: int) -> None:
        b = self.cfg.ema
        self.smooth = float(loss) if self.smooth is None else b * self.smooth + (1 - b) * float(loss)
        self.steps += 1
        if self.steps < self.cfg.interval:
            return
        self.steps = 0
        if self.prev is not None:
            slope = (self.smooth - self.prev) / max(abs(self.prev), 1e-12)
            self.rises = self.rises + 1 if slope > self.cfg.tolerance else 0
            self.rate = gas_step(self.rate, slope, self.cfg, self.ceiling, self.rises)
            if self.rises >= self.cfg.patience:
                self.rises = 0  # backed off: the next rise counts afresh
            self._apply()
        self.prev = self.smooth
        self._record(step, self.smooth)

    def status(self) -> dict[str, str]:
        """The rate reached and the share of MACs it removes (progress bar and epoch lines)."""
        return {"token rate": f"{self.rate:.3f}", "MACs removed": f"{self.macs_reduction:.1%}"}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return {
            "rate": self.rate,
            "steps": self.steps,
            "rises": self.rises,
            "smooth": self.smooth,
            "prev": self.prev,
            "trajectory": list(self.trajectory),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rate = float(state["rate"])
        self.steps, self.rises = int(state["steps"]), int(state["rises"])
        self.smooth, self.prev = state["smooth"], state["prev"]
        self.trajectory[:] = state["trajectory"]
        self._apply()

    # ------------------------------------------------------------------ helpers
    @property
    def macs_reduction(self) -> float:
        sched = schedule_of(self.model)
        return 0.0 if sched is None else macs_reduction(self.model, sched)

    def _apply(self) -> None:
        set_keep(self.model, round(1.0 - self.rate, 6))

    def _record(self, step: int, loss: float | None) -> None:
        self.trajectory.append(
            {
                "step": int(step),
                "loss": loss,
                "rate": round(self.rate, 6),
                "macs_reduction": round(self.macs_reduction, 6),
            }
        )
