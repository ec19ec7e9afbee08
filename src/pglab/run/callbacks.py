"""Lightning callbacks of pglab's own (everything else comes from Lightning)."""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar

from pglab.envs.make import run_episodes
from pglab.run.recorder import lower_priority, record_clip, warm_up

__all__ = ["SolveTracker", "EvalCallback", "ReplicaCheck", "EnvStepProgressBar", "format_progress", "announce",
           "job_label", "last_return", "ReplayFirstRollout", "PhaseTimer"]


class EvalCallback(L.Callback):
    """Every ``every_n_epochs`` epochs (and after the last), runs the deterministic policy (the mode of π) on a
    separate eval vector env for ``episodes`` episodes; logs ``eval/return_mean``, ``eval/return_std``,
    ``eval/length_mean``. Observation normalisation statistics are copied from training and frozen.

    ``video_dir``: also record one episode of the same deterministic policy per evaluation, on a one-env copy of
    the env (needs moviepy): one clip of one env (``eval-step<env steps>.mp4``), as CleanRL and rl-zoo3 record,
    not a mosaic of every eval env; the statistics come from the unrecorded episodes. Rendering and encoding a
    clip take seconds (every frame is rendered), so a recorder *process* does both, from a copy of the
    policy's weights and the frozen statistics, while training goes on; a clip goes to W&B at the env steps of the
    evaluation it shows once written, and training waits at its end for the last one. The recorder keeps to
    ``video_share`` (10%) of training's time: when evaluations come faster than that, or while it is busy, an
    evaluation's clip waits and the next evaluation replaces it (the latest policy is the one worth seeing); the
    last evaluation's clip is always made, and the run says how many were. Should the recorder process fail (e.g.
    an env registered only in this process), recording falls back to this process.
    ``benchmarks/video_cost.py`` measures what video costs training."""

    # "process" (the default, above); "inline": the same recording in this process, each clip made before training
    # goes on (the fallback, and the benchmark's reference)
    video_recorder = "process"
    # the recorder's time, as a share of training's time so far, above which an evaluation's clip waits (replaced by
    # the next one): on a machine with no idle core its work slows training by about this much
    video_share = 0.1

    def __init__(self, every_n_epochs: int = 10, episodes: int = 10, num_envs: int = 4, seed: int = 10_000,
                 video_dir: str | None = None) -> None:
        if every_n_epochs < 1 or episodes < 1 or num_envs < 1:
            raise ValueError("eval.every_n_epochs, eval.episodes and eval.num_envs must be >= 1")
        self.every_n_epochs, self.episodes, self.num_envs, self.seed = every_n_epochs, episodes, num_envs, seed
        self.video_dir = video_dir
        self.envs = None
        self.evaluations = 0
        self._recorder = None      # the recorder process (a one-worker pool), started with training
        self._in_flight = None     # (future → path, env steps, job arguments) being recorded
        self._waiting = None       # (job arguments, env steps) of the latest evaluation not yet recorded
        self._clips_asked = self._clips_made = 0
        self._inline = self.video_recorder != "process"
        self._fit_start = time.monotonic()
        self._recorder_s = 0.0     # seconds the recorder has spent on clips (from submit to result)

    def _evaluate(self, trainer: L.Trainer, module) -> None:
        # rank 0 evaluates (and records videos); every rank gets its numbers, so checkpointing by eval/return_mean
        # decides the same everywhere
        metrics = self._evaluate_here(trainer, module) if trainer.global_rank == 0 else None
        if trainer.world_size > 1:
            metrics = trainer.strategy.broadcast(metrics, src=0)
        module.emit_metrics(metrics)
        if trainer.global_rank == 0 and self.video_dir is not None:
            self._advance(trainer, wait=False)

    def _evaluate_here(self, trainer: L.Trainer, module) -> dict[str, float]:
        datamodule = trainer.datamodule
        if self.envs is None:
            self.envs = datamodule.make_eval_envs(self.num_envs)
        else:
            datamodule.sync_obs_normalization(self.envs)
        actor = module.actor()  # the acting policy collection uses, in its deterministic (mode) form

        def act(obs):
            return actor.act(obs.to(module.device), deterministic=True).actions

        seed = self.seed + self.evaluations
        with torch.inference_mode():
            returns, lengths = run_episodes(self.envs, act, self.episodes, seed=seed)
        step = int(module.env_steps)
        if self.video_dir is not None:
            self._clips_asked += 1
            # what the recorder needs to act as this policy does: the run's env and model, the frozen observation
            # statistics and a CPU copy of the weights (the module trains on meanwhile)
            weights = {k: v.detach().to("cpu", copy=True) for k, v in module.policy.state_dict().items()}
            job = (datamodule.env_cfg, datamodule._normalization_state(), module.run_config["model"], weights, seed,
                   str(Path(self.video_dir) / f"eval-step{step}.mp4"))
            if self._inline:
                self._record_here(trainer, job, step)
            else:
                self._waiting = (job, step)  # replaces an older evaluation still waiting
        self.evaluations += 1
        return {"eval/return_mean": float(returns.mean()), "eval/return_std": float(returns.std()),
                "eval/length_mean": float(lengths.mean())}

    def _record_here(self, trainer: L.Trainer, job: tuple, step: int) -> None:
        try:
            path = record_clip(*job)
        except Exception as err:  # noqa: BLE001 - a clip that cannot be made must not end the run
            print(f"pglab: an eval video could not be recorded: {type(err).__name__}: {err}", file=sys.stderr)
            return
        self._clips_made += 1
        self._log_clip(trainer, path, step)

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        self._fit_start = time.monotonic()
        if self.video_dir is not None and not self._inline and trainer.global_rank == 0:
            # the recorder process starts now, beside training: its interpreter and imports (torch, gymnasium,
            # moviepy: seconds) are paid while training runs, not when the first clip or the last is due
            self._start_recorder()
            self._recorder.submit(warm_up)

    def _start_recorder(self) -> None:
        if self._recorder is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: a fork would copy this process's threads (W&B, the data loader) and their locks
            self._recorder = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=lower_priority)

    def on_train_epoch_end(self, trainer: L.Trainer, module) -> None:
        last = trainer.should_stop or (trainer.max_epochs not in (None, -1)
                                       and trainer.current_epoch + 1 >= trainer.max_epochs)
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 or last:
            self._evaluate(trainer, module)

    def _advance(self, trainer: L.Trainer, wait: bool) -> None:
        """Log the clip in flight once written (``wait``: wait for it), then start the one waiting."""
        while True:
            if self._in_flight is not None:
                future, step, job, started = self._in_flight
                if not (wait or future.done()):
                    return
                self._in_flight = None
                self._recorder_s += time.monotonic() - started
                try:
                    path = future.result()
                except Exception as err:  # noqa: BLE001 - the recorder process failed: record here from now on
                    print(f"pglab: the eval video recorder process failed ({type(err).__name__}: {err}); recording "
                          "in the training process from now on", file=sys.stderr)
                    self._stop_recorder()
                    self._inline = True
                    self._record_here(trainer, job, step)
                    if self._waiting is not None:
                        (job, step), self._waiting = self._waiting, None
                        self._record_here(trainer, job, step)
                    return
                self._clips_made += 1
                self._log_clip(trainer, path, step)
            if self._waiting is None:
                return
            elapsed = time.monotonic() - self._fit_start
            if not wait and self._recorder_s > self.video_share * elapsed:
                return  # over its share: the clip waits (a later evaluation replaces it; the last is always made)
            (job, step), self._waiting = self._waiting, None
            self._start_recorder()
            self._in_flight = (self._recorder.submit(record_clip, *job), step, job, time.monotonic())

    def _log_clip(self, trainer: L.Trainer, path, step: int) -> None:
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                logger.log_video("eval/video", [str(path)], step=step, format=["mp4"])

    def _stop_recorder(self) -> None:
        if self._recorder is not None:
            self._recorder.shutdown(wait=True, cancel_futures=True)
            self._recorder = None

    def on_fit_end(self, trainer: L.Trainer, module) -> None:
        if self.envs is not None:
            self.envs.close()
        self.envs = None
        if self.video_dir is not None and trainer.global_rank == 0:
            self._advance(trainer, wait=True)  # the clip in flight, then the last evaluation's
            self._stop_recorder()
            if self._clips_made < self._clips_asked:
                print(f"pglab: eval video: {self._clips_made} of {self._clips_asked} evaluations recorded, the last "
                      f"among them (a clip takes seconds to render; the recorder keeps to about "
                      f"{self.video_share:.0%} of training's time, and an evaluation that came while a clip was "
                      "being made replaced the one waiting)", flush=True)

    def on_exception(self, trainer: L.Trainer, module, exception: BaseException) -> None:
        self._stop_recorder()


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    seconds = int(round(max(seconds, 0.0)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress_fields(metrics: dict, done: int, start_steps: int, elapsed: float) -> list[tuple[str, str, str]]:
    """(long label, short label, value) of what a progress line shows beyond the counter and the ETA, in the order
    they are given up when the line is too narrow: the last first."""
    fields = []
    for key, label, short in (("rollout/return_mean20", "return(20)", "ret"), ("eval/return_mean", "eval", "eval")):
        if key in metrics and math.isfinite(float(metrics[key])):  # nan: no episode has finished yet
            fields.append((label, short, f"{float(metrics[key]):.1f}"))
    if elapsed > 0 and done > start_steps:
        fields.append(("", "", f"{(done - start_steps) / elapsed:,.0f} steps/s"))
    fields.append(("elapsed", "", _clock(elapsed)))
    return fields


def eta_seconds(done: int, total: int, start_steps: int, elapsed: float) -> float | None:
    if done <= start_steps or elapsed <= 0:
        return None
    return max(total - done, 0) * elapsed / (done - start_steps)


def format_progress(width: int, done: int, total: int, fields: list[tuple[str, str, str]],
                    eta: float | None) -> str:
    """One progress line of at most ``width`` characters.

    The counter (``16,720/60,000 env steps``) and the ETA are kept whole; to fit, the fields are shortened
    (``return(20)`` → ``ret``), then dropped from the last (elapsed, speed, eval, return), and the bar shrinks
    (at least 10 cells) or goes. Only a terminal narrower than the counter and ETA themselves cuts the line."""
    counter = f"{min(done, total):,}/{total:,} env steps"
    tail = f"ETA {_clock(eta)}"

    def fmt(kept, short):
        return [f"{(s if short else lab)} {v}".strip() for lab, s, v in kept]

    candidates = []
    for n in range(len(fields), -1, -1):
        for short in (False, True):
            candidates.append(" · ".join([counter, *fmt(fields[:n], short), tail]))
    for text in candidates:  # with a bar
        room = width - len("pglab ") - 1 - len(text)
        if room >= 10:
            filled = int(room * min(done, total) / total) if total > 0 else room
            return f"pglab {'━' * filled}{'─' * (room - filled)} {text}"
    for text in candidates:
        if len("pglab ") + len(text) <= width:
            return f"pglab {text}"
    return f"pglab {counter} · {tail}"[:width]


def last_return(metrics: dict) -> str:
    """The final line's word on returns: the last rollout's mean episode return, or that no episode has finished
    (a budget shorter than one episode logs nan there)."""
    value = float(metrics.get("rollout/episode_return", math.nan))
    return f"last mean episode return {value:.1f}" if math.isfinite(value) else "no episode finished yet"


def announce(cfg, out) -> None:
    """The first line of a run, before W&B, the envs and the network are built: what runs and where it writes."""
    from pglab.run.naming import hydra_choices, resumed_names

    # a resumed run trains its checkpoint's algorithm: say that one, not this command line's defaults
    choices = {**hydra_choices(), **resumed_names(cfg.get("ckpt_path")).get("choices", {})}
    what = choices.get("experiment") or choices.get("algo") or "a run"
    parts = "/".join(choices[k] for k in ("estimator", "baseline", "surrogate") if k in choices)
    print(f"pglab: {job_label()}training {what}{f' ({parts})' if parts else ''} on {cfg.env.id} for "
          f"{int(cfg.total_env_steps):,} env steps; outputs in {out}", flush=True)


def job_label() -> str:
    """``job 3 (seed=1): `` under a multirun (whose jobs share one log), else ``""``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return ""
    hydra_cfg = HydraConfig.get()
    overrides = " ".join(hydra_cfg.overrides.task)
    return f"job {hydra_cfg.job.num}{f' ({overrides})' if overrides else ''}: "


class EnvStepProgressBar(ProgressBar):
    """Progress counted in env steps: done/total, the running return, the last eval, env steps/s, elapsed, ETA.

    Lightning's bars count batches and epochs; pglab's epochs are rollouts of varying size under an env-step
    budget, so they show "Epoch 392/-2". On a terminal (``bar``) this is one live line that fits the terminal's
    width (see ``format_progress``); when stdout is not a terminal (a SLURM or nohup log), or with ``bar=False``
    (multirun jobs sharing one terminal), it prints a plain line every ``every_s`` seconds and at the end. Rank 0
    only. Updated when a rollout's metrics are complete: at the next rollout's start and at the end."""

    def __init__(self, total_env_steps: int, every_s: float = 30.0, bar: bool | None = None) -> None:
        super().__init__()
        if every_s <= 0:
            raise ValueError(f"progress_every_s must be > 0 seconds, got {every_s}")
        self.total_env_steps, self.every_s, self.bar = total_env_steps, float(every_s), bar
        self._enabled = True
        self._progress = None
        self._task = None
        self._start_time = None
        self._start_steps = 0
        self._last_line = None
        self.lines_printed = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _state(self, trainer: L.Trainer, module) -> tuple[int, list, float | None]:
        done = int(module.env_steps)
        elapsed = time.monotonic() - self._start_time
        fields = progress_fields(trainer.callback_metrics, done, self._start_steps, elapsed)
        return done, fields, eta_seconds(done, self.total_env_steps, self._start_steps, elapsed)

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        self._start_time, self._start_steps = time.monotonic(), int(module.env_steps)
        use_bar = sys.stdout.isatty() if self.bar is None else self.bar and sys.stdout.isatty()
        if not use_bar:
            self._last_line = time.monotonic()
            return
        from rich.progress import Progress, ProgressColumn
        from rich.text import Text

        bar = self

        class Line(ProgressColumn):
            def render(self, task) -> Text:
                done, fields, eta = task.fields["state"]
                if bar._start_time is not None:  # elapsed and ETA move between rollouts too
                    elapsed = time.monotonic() - bar._start_time
                    fields = [f if f[0] != "elapsed" else ("elapsed", "", _clock(elapsed)) for f in fields]
                    eta = eta_seconds(done, bar.total_env_steps, bar._start_steps, elapsed) if done else eta
                width = bar._progress.console.width - 1  # the last column: some terminals wrap on it
                return Text(format_progress(width, done, bar.total_env_steps, fields, eta))

        self._progress = Progress(Line(), auto_refresh=True, refresh_per_second=4, transient=False)
        self._progress.start()
        self._task = self._progress.add_task("train", total=self.total_env_steps,
                                             state=(self._start_steps, [], None))

    def _update(self, trainer: L.Trainer, module, final: bool = False) -> None:
        if self._start_time is None:
            return
        done, fields, eta = self._state(trainer, module)
        if self._progress is not None:
            self._progress.update(self._task, state=(done, fields, eta))
            return
        now = time.monotonic()
        if final or now - self._last_line >= self.every_s:
            self._last_line = now
            share = f" ({100 * min(done, self.total_env_steps) / self.total_env_steps:.0f}%)" \
                if self.total_env_steps > 0 else ""
            extras = " · ".join(f"{label} {value}".strip() for label, _, value in fields)
            print(f"pglab: {job_label()}{min(done, self.total_env_steps):,}/{self.total_env_steps:,} env steps"
                  f"{share} · {extras} · ETA {_clock(0.0 if final else eta)}", flush=True)
            self.lines_printed += 1

    def on_train_epoch_start(self, trainer: L.Trainer, module) -> None:
        # the previous rollout's metrics are all in now: the module and the eval callback log at epoch end
        if trainer.current_epoch > 0:
            self._update(trainer, module)

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def on_train_end(self, trainer: L.Trainer, module) -> None:
        self._update(trainer, module, final=True)
        self._stop()
        self._start_time = None

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


class ReplayFirstRollout(L.Callback):
    """``debug=overfit``: every epoch after the first trains on the first epoch's rollout again (its minibatches
    reshuffled), so the env-step count stops and ``trainer.max_epochs`` ends the run. An update that cannot lower
    its losses on data it sees over and over is broken; the per-epoch ``train/*_loss`` show it."""

    def __init__(self) -> None:
        self.loader = None

    def on_train_epoch_end(self, trainer: L.Trainer, module) -> None:
        if self.loader is None:
            self.loader = trainer.train_dataloader  # the DataLoader the first rollout was collected into
            loader = self.loader
            trainer.datamodule.train_dataloader = lambda: loader  # Lightning reloads it every epoch


class PhaseTimer(L.Callback):
    """Wall-clock seconds per phase of training: collection (the dataloader reload between epochs, where the
    rollout is collected), updates (the training steps) and the rest of each epoch (metrics, eval, checkpoints,
    Lightning's loop). Written to ``path`` (JSON) and printed at the end (``debug=profiler``)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self.seconds = {"collect": 0.0, "update": 0.0, "epoch_end_and_loop": 0.0}
        self.epochs = 0
        self._mark = None
        self._batch = None
        self._start = None

    def on_train_start(self, trainer, module) -> None:
        self._start = self._mark = time.perf_counter()

    def on_train_epoch_start(self, trainer, module) -> None:
        now = time.perf_counter()
        # the first epoch's rollout was collected before training started; later ones since the last epoch's end
        self.seconds["collect"] += now - self._mark
        self._mark = now

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._batch = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seconds["update"] += time.perf_counter() - self._batch

    def on_train_epoch_end(self, trainer, module) -> None:
        self.epochs += 1
        self._mark = time.perf_counter()

    def on_train_end(self, trainer, module) -> None:
        if self._start is None or not trainer.is_global_zero:
            return
        total = time.perf_counter() - self._start
        self.seconds["epoch_end_and_loop"] = max(total - self.seconds["collect"] - self.seconds["update"], 0.0)
        report = {"epochs": self.epochs, "total_s": total, "seconds": self.seconds,
                  "share": {k: v / total for k, v in self.seconds.items()} if total > 0 else {}}
        if self.path:
            import json
            from pathlib import Path

            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.path).write_text(json.dumps(report, indent=2) + "\n")
        print("pglab: phases: " + ", ".join(f"{k} {v:.2f} s ({v / total:.0%})" for k, v in self.seconds.items())
              + f" of {total:.2f} s over {self.epochs} rollouts", flush=True)
