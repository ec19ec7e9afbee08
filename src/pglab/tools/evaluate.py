"""Evaluate a checkpoint:
``python -m pglab.tools.evaluate ckpt_path=outputs/ppo/CartPole-v1/<time>/checkpoints/last.ckpt``.

Rebuilds the environment and the actor-critic from the training run's config stored in the checkpoint
(``ckpt["pglab"]["config"]``), loads the ``policy.*`` weights, restores and freezes the observation-normalisation
statistics when the run normalised observations, and runs ``episodes`` episodes with raw (unnormalised) rewards.
Prints return mean / std / min / max and the mean episode length, and writes them with the per-episode lists to
``<output_dir>/evaluation.json``. ``video=true`` records the first env's episodes to ``<output_dir>/videos``, one clip
per episode (needs moviepy). While it runs, a line every ``progress_every_s`` seconds (and at each new clip) says
how far it got: rendering and encoding make a recorded evaluation take tens of seconds.

Options: ``conf/evaluate.yaml`` (episodes, num_envs, seed, deterministic, video, output_dir, progress_every_s).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import gymnasium as gym
import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pglab.envs.make import env_config_from_dict, make_frozen_envs, require_video_support, run_episodes
from pglab.models.build import build_policy
from pglab.run.checkpoints import CheckpointError, check_finite_weights, load_checkpoint

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")

__all__ = ["CheckpointError", "load_checkpoint", "build_checkpoint_policy", "make_eval_envs", "evaluate",
           "EvalProgress", "default_output_dir", "main"]


def make_eval_envs(ckpt: dict, num_envs: int, video_dir: str | None = None):
    """The run's env with reward normalisation off and observation normalisation (if any) frozen at the
    checkpoint's statistics."""
    cfg = env_config_from_dict(ckpt["pglab"]["config"]["env"], record_video_dir=video_dir)
    try:
        return make_frozen_envs(cfg, num_envs, ckpt.get("OnPolicyDataModule") or {})
    except ValueError as err:
        raise CheckpointError(f"{err}: the checkpoint cannot be evaluated as trained") from err


def build_checkpoint_policy(ckpt: dict, envs):
    """The run's ActorCritic with the checkpoint's ``policy.*`` weights, in eval mode."""
    policy = build_policy(ckpt["pglab"]["config"]["model"], envs.single_observation_space,
                          envs.single_action_space)
    weights = {k[len("policy."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("policy.")}
    try:
        policy.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"the checkpoint's policy weights do not fit the network its config describes: {err}") \
            from err
    return policy.eval()


class EvalProgress(gym.vector.VectorWrapper):
    """Prints ``pglab.tools.evaluate: 3/10 episodes finished · 1,500 env steps · 2 clips · 0:00:12`` every
    ``every_s`` seconds and whenever a new clip appears in ``video_dir``, so a long recorded evaluation is not
    silent. Counts every finished episode of the vector env (its first ``episodes`` are the ones reported)."""

    def __init__(self, env: gym.vector.VectorEnv, episodes: int, video_dir: str | None = None,
                 every_s: float = 5.0) -> None:
        super().__init__(env)
        self.episodes, self.video_dir, self.every_s = episodes, video_dir, float(every_s)
        self.steps = self.finished = self.clips = 0
        self.start = self.last = time.monotonic()

    def _count_clips(self) -> int:
        if self.video_dir is None or not Path(self.video_dir).is_dir():
            return 0
        return sum(1 for p in Path(self.video_dir).iterdir() if p.suffix == ".mp4")

    def line(self) -> str:
        elapsed = int(time.monotonic() - self.start)
        clips = f" · {self.clips} clip{'s' if self.clips != 1 else ''} in {self.video_dir}" if self.video_dir else ""
        return (f"pglab.tools.evaluate: {min(self.finished, self.episodes)}/{self.episodes} episodes finished · "
                f"{self.steps:,} env steps{clips} · {elapsed // 3600}:{elapsed % 3600 // 60:02d}:{elapsed % 60:02d}")

    def step(self, actions):
        result = self.env.step(actions)
        self.steps += self.num_envs
        self.finished += int(np.count_nonzero(np.asarray(result[2]) | np.asarray(result[3])))
        now = time.monotonic()
        clips = self._count_clips() if self.video_dir is not None else 0
        if clips != self.clips or now - self.last >= self.every_s:
            self.clips, self.last = clips, now
            print(self.line(), flush=True)
        return result


def default_output_dir(ckpt_path: str | Path) -> Path:
    """``<run dir>/evaluate`` for ``<run dir>/checkpoints/x.ckpt``, else ``evaluate/`` beside the checkpoint."""
    parent = Path(ckpt_path).parent
    return (parent.parent if parent.name == "checkpoints" else parent) / "evaluate"


def evaluate(ckpt_path: str | Path, episodes: int = 10, num_envs: int = 4, seed: int = 12345,
             deterministic: bool = True, video_dir: str | None = None, progress_every_s: float | None = None) -> dict:
    """Run ``episodes`` episodes of the checkpoint's policy; returns the statistics and per-episode lists.
    ``progress_every_s``: print a progress line that often (and at each new clip); None: silent."""
    if episodes < 1 or num_envs < 1:
        raise ValueError("episodes and num_envs must be >= 1")
    if video_dir is not None:
        require_video_support()
    ckpt = load_checkpoint(ckpt_path)
    check_finite_weights(ckpt, ckpt_path)
    envs = make_eval_envs(ckpt, num_envs, video_dir)
    if progress_every_s is not None:
        envs = EvalProgress(envs, episodes, video_dir, progress_every_s)
    try:
        policy = build_checkpoint_policy(ckpt, envs)
        torch.manual_seed(seed)  # sampled actions (deterministic=false) are reproducible too
        with torch.inference_mode():
            returns, lengths = run_episodes(envs, lambda obs: policy.act(obs, deterministic=deterministic).actions,
                                            episodes, seed=seed)
    finally:
        envs.close()
    if returns.size == 0:
        raise RuntimeError("no episode finished within the step limit")
    if returns.size < episodes:
        print(f"pglab.tools.evaluate: only {returns.size} of {episodes} episodes finished within the step limit",
              file=sys.stderr)
    return {
        "ckpt_path": str(ckpt_path), "env_id": ckpt["pglab"]["config"]["env"]["id"],
        "env_steps_trained": int(ckpt["state_dict"]["env_steps"]) if "env_steps" in ckpt["state_dict"] else None,
        "episodes": int(returns.size), "num_envs": num_envs, "seed": seed, "deterministic": deterministic,
        "return_mean": float(returns.mean()), "return_std": float(returns.std()),
        "return_min": float(returns.min()), "return_max": float(returns.max()),
        "length_mean": float(lengths.mean()),
        "returns": returns.tolist(), "lengths": lengths.tolist(),
    }


def format_results(results: dict) -> str:
    policy = "deterministic policy (mode of π)" if results["deterministic"] else "sampled actions"
    trained = results["env_steps_trained"]
    lines = [f"pglab.tools.evaluate: {results['ckpt_path']}"
             + (f" ({trained} env steps of training)" if trained is not None else ""),
             f"  {results['env_id']}, {results['episodes']} episodes, {policy}, seed {results['seed']}, "
             f"{results['num_envs']} envs, raw rewards"]
    for key in ("return_mean", "return_std", "return_min", "return_max", "length_mean"):
        lines.append(f"  {key:<12} {results[key]:.3f}")
    lines.append(f"  {'returns':<12} {' '.join(f'{r:g}' for r in results['returns'])}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> float:
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        print("pglab.tools.evaluate: which checkpoint? python -m pglab.tools.evaluate "
              "ckpt_path=outputs/<experiment or algo>/<env>/<time>/checkpoints/"
              "last.ckpt", file=sys.stderr)
        sys.exit(2)
    out = Path(cfg.output_dir) if cfg.output_dir is not None else default_output_dir(cfg.ckpt_path)
    try:
        if cfg.video:
            try:
                require_video_support()
            except ImportError as err:  # the message names the training switch; here it is video=false
                raise ImportError(str(err).replace("eval.video=false", "video=false")) from err
        if not Path(cfg.ckpt_path).is_file():
            raise CheckpointError(f"checkpoint not found: {cfg.ckpt_path}")
        results = evaluate(cfg.ckpt_path, episodes=int(cfg.episodes), num_envs=int(cfg.num_envs),
                           seed=int(cfg.seed), deterministic=bool(cfg.deterministic),
                           video_dir=str(out / "videos") if cfg.video else None,
                           progress_every_s=float(cfg.get("progress_every_s", 5.0)))
    except (CheckpointError, ImportError, ValueError) as err:
        print(f"pglab.tools.evaluate: {err}", file=sys.stderr)
        sys.exit(2)
    print(format_results(results))
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"pglab.tools.evaluate: results in {out / 'evaluation.json'}" + (f", videos in {out / 'videos'}"
                                                                      if cfg.video else ""))
    return results["return_mean"]


if __name__ == "__main__":
    main()
