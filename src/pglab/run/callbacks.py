"""Lightning callbacks of pglab's own (everything else comes from Lightning)."""

from __future__ import annotations

from collections import deque

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar

from pglab.envs.make import run_episodes

__all__ = ["SolveTracker", "EvalCallback", "ReplicaCheck", "EnvStepProgressBar"]


class EvalCallback(L.Callback):
    """Every ``every_n_epochs`` epochs (and after the last), runs the deterministic policy (the mode of π) on a
    separate eval vector env for ``episodes`` episodes; logs ``eval/return_mean``, ``eval/return_std``,
    ``eval/length_mean``. Observation normalisation statistics are copied from training and frozen.
    ``video_dir``: record the first eval env's episodes there with gymnasium's RecordVideo (needs moviepy)."""

    def __init__(self, every_n_epochs: int = 10, episodes: int = 10, num_envs: int = 4, seed: int = 10_000,
                 video_dir: str | None = None) -> None:
        if every_n_epochs < 1 or episodes < 1 or num_envs < 1:
            raise ValueError("eval.every_n_epochs, eval.episodes and eval.num_envs must be >= 1")
        self.every_n_epochs, self.episodes, self.num_envs, self.seed = every_n_epochs, episodes, num_envs, seed
        self.video_dir = video_dir
        self.envs = None
        self.evaluations = 0

    def _evaluate(self, trainer: L.Trainer, module) -> None:
        # rank 0 evaluates (and records videos); every rank gets its numbers, so checkpointing by eval/return_mean
        # decides the same everywhere
        metrics = self._evaluate_here(trainer, module) if trainer.global_rank == 0 else None
        if trainer.world_size > 1:
            metrics = trainer.strategy.broadcast(metrics, src=0)
        module.emit_metrics(metrics)
        if trainer.global_rank == 0:
            log_videos(trainer, self.video_dir, int(module.env_steps))

    def _evaluate_here(self, trainer: L.Trainer, module) -> dict[str, float]:
        datamodule = trainer.datamodule
        if self.envs is None:
            if self.video_dir is not None:
                self.envs = datamodule.make_eval_envs(self.num_envs, record_video_dir=self.video_dir)
            else:
                self.envs = datamodule.make_eval_envs(self.num_envs)
        else:
            datamodule.sync_obs_normalization(self.envs)
        actor = module.actor()  # the acting policy collection uses, in its deterministic (mode) form
        with torch.inference_mode():
            returns, lengths = run_episodes(
                self.envs, lambda obs: actor.act(obs.to(module.device), deterministic=True).actions,
                self.episodes, seed=self.seed + self.evaluations)
        self.evaluations += 1
        return {"eval/return_mean": float(returns.mean()), "eval/return_std": float(returns.std()),
                "eval/length_mean": float(lengths.mean())}

    def on_train_epoch_end(self, trainer: L.Trainer, module) -> None:
        last = trainer.should_stop or (trainer.max_epochs not in (None, -1)
                                       and trainer.current_epoch + 1 >= trainer.max_epochs)
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 or last:
            self._evaluate(trainer, module)

    def on_fit_end(self, trainer: L.Trainer, module) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None


def log_videos(trainer: L.Trainer, video_dir: str | None, step: int) -> None:
    """Send the newest recorded video to W&B (if a W&B logger is attached)."""
    if video_dir is None:
        return
    from pathlib import Path

    videos = sorted(Path(video_dir).glob("*.mp4"), key=lambda p: p.stat().st_mtime)
    if not videos:
        return
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.log_video("eval/video", [str(videos[-1])], step=step, format=["mp4"])


class EnvStepProgressBar(ProgressBar):
    """A progress bar counted in env steps: done/total, the running return, env steps/s and the time left.

    Lightning's bars count batches and epochs; pglab's epochs are rollouts of varying size under an env-step
    budget, so they show "Epoch 392/-2". This one is updated once per rollout (rich, rank 0 only)."""

    def __init__(self, total_env_steps: int) -> None:
        super().__init__()
        self.total_env_steps = total_env_steps
        self._enabled = True
        self._progress = None
        self._task = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(TextColumn("[bold]pglab"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("env steps"), TextColumn("{task.fields[info]}"), TimeRemainingColumn())
        self._progress.start()
        self._task = self._progress.add_task("train", total=self.total_env_steps,
                                             completed=min(int(module.env_steps), self.total_env_steps), info="")

    def on_train_epoch_end(self, trainer: L.Trainer, module) -> None:
        if self._progress is None:
            return
        metrics = trainer.callback_metrics
        parts = []
        for key, label, fmt in (("rollout/return_mean20", "return(20)", "{:.1f}"),
                                ("eval/return_mean", "eval", "{:.1f}"), ("perf/sps", "", "{:,.0f} steps/s")):
            if key in metrics:
                parts.append(f"{label} {fmt.format(float(metrics[key]))}".strip())
        self._progress.update(self._task, completed=min(int(module.env_steps), self.total_env_steps),
                              info=" · ".join(parts))

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def on_train_end(self, trainer: L.Trainer, module) -> None:
        self._stop()

    def on_exception(self, trainer: L.Trainer, module, exception: BaseException) -> None:
        self._stop()


class ReplicaCheck(L.Callback):
    """Asserts after every Lightning step that every rank holds the same parameters and the same observation/reward
    normalisation statistics (DDP keeps replicas in sync; a bug or an unsynchronised update path would let them
    drift). One all-gather of a checksum per step: a
    diagnostic for tests and for forks changing the update, not for production runs.

    ``record``: a JSON file where rank 0 writes the number of steps checked."""

    def __init__(self, record: str | None = None) -> None:
        self.record, self.checked = record, 0

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx: int) -> None:
        from pglab.core.collectives import all_ranks

        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in module.policy.parameters()])
        digest = [float(flat.sum()), float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64)).sum())]
        for rms, _ in trainer.datamodule._running_stats().values():
            digest += [float(rms.mean.sum()), float(rms.var.sum()), float(rms.count)]
        everyone = all_ranks(digest)
        if any(d != everyone[0] for d in everyone):
            raise RuntimeError(f"ranks hold different parameters after update {module.updates}: {everyone}")
        self.checked += 1

    def on_train_end(self, trainer: L.Trainer, module) -> None:
        if self.record is not None and trainer.global_rank == 0:
            import json

            with open(self.record, "w") as file:
                json.dump({"steps_checked": self.checked, "world_size": trainer.world_size,
                           "updates": module.updates, "env_steps": int(module.env_steps)}, file)


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
        module.emit_metrics({f"rollout/return_mean{self.window}": running})
        if self.threshold is not None and self.solved_at is None and running >= self.threshold:
            self.solved_at = steps
            if self.stop_when_solved:
                trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"returns": list(self.returns), "solved_at": self.solved_at}

    def load_state_dict(self, state: dict) -> None:
        self.returns = deque(state["returns"], maxlen=self.window)
        self.solved_at = state["solved_at"]
