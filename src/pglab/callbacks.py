"""Lightning callbacks of pglab's own (everything else comes from Lightning)."""

from __future__ import annotations

from collections import deque

import lightning as L

__all__ = ["SolveTracker"]


class SolveTracker(L.Callback):
    """Running mean of the last ``window`` episode returns; records the env step where it first reaches
    ``threshold`` and, with ``stop_when_solved``, ends training there (time-to-solve benchmarks).

    Logs ``rollout/return_mean{window}``. Lightning has no built-in for per-episode statistics: episodes
    end inside rollouts, not at logging steps.
    """

    def __init__(self, window: int = 20, threshold: float | None = None, stop_when_solved: bool = False) -> None:
        self.window, self.threshold, self.stop_when_solved = window, threshold, stop_when_solved
        self.returns: deque[float] = deque(maxlen=window)
        self.solved_at: int | None = None
        self.history: list[tuple[int, float]] = []  # (env steps at end of epoch, running mean)

    def on_train_epoch_end(self, trainer: L.Trainer, module) -> None:
        rollout = module.last_rollout
        if rollout is None:
            return
        self.returns.extend(rollout.episode_returns.tolist())
        if len(self.returns) < self.window:
            return
        running = sum(self.returns) / len(self.returns)
        steps = int(module.env_steps)
        self.history.append((steps, running))
        module.log(f"rollout/return_mean{self.window}", running, on_epoch=True)
        if self.threshold is not None and self.solved_at is None and running >= self.threshold:
            self.solved_at = steps
            if self.stop_when_solved:
                trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"returns": list(self.returns), "solved_at": self.solved_at}

    def load_state_dict(self, state: dict) -> None:
        self.returns = deque(state["returns"], maxlen=self.window)
        self.solved_at = state["solved_at"]
