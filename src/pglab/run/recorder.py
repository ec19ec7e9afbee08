"""The eval video recorder's work, in a module that imports neither Lightning nor the trainer: the recorder is a
spawned process, and what it unpickles (``record_clip``) is imported there by module — from here that costs torch,
gymnasium and moviepy, not Lightning on top (``pglab.run.callbacks.EvalCallback`` runs it)."""

from __future__ import annotations

from pathlib import Path

import torch


def warm_up() -> None:
    """Import what a clip needs, so that the first clip does not wait for it (submitted when training starts)."""
    import pglab.envs.make  # noqa: F401
    import pglab.models.build  # noqa: F401

    try:
        import moviepy.video.io.ImageSequenceClip  # noqa: F401
    except ImportError:  # checked at start-up (require_video_support); nothing to warm
        pass


def lower_priority() -> None:
    """The recorder process yields the CPU to training: it renders on what the machine has spare."""
    import os

    try:
        os.nice(10)
    except (AttributeError, OSError):  # no nice on this platform: the video share still bounds it
        pass


def record_clip(env_cfg, stats: dict, model_cfg: dict, weights: dict, seed: int, path: str) -> str:
    """In the recorder process: one episode of the deterministic policy (``model_cfg`` with ``weights``) on a
    one-env copy of ``env_cfg`` frozen at ``stats``, each step's frame (the first env's ``render()``, as
    RecordVideo captures it) written to ``path`` (mp4)."""
    import dataclasses

    from pglab.envs.make import _headless_sdl, make_frozen_envs
    from pglab.models.build import build_policy

    torch.set_num_threads(1)
    _headless_sdl()
    cfg = dataclasses.replace(env_cfg, kwargs={**dict(env_cfg.kwargs), "render_mode": "rgb_array"})
    envs = make_frozen_envs(cfg, 1, stats)
    try:
        fps = envs.metadata.get("render_fps") or 30
        policy = build_policy(model_cfg, envs.single_observation_space, envs.single_action_space)
        policy.load_state_dict(weights)
        policy.eval()
        obs, _ = envs.reset(seed=seed)
        frames = [envs.render()[0]]
        with torch.inference_mode():
            for _ in range(100_000):
                actions = policy.act(torch.as_tensor(obs, dtype=torch.float32), deterministic=True).actions
                obs, _, terminated, truncated, _ = envs.step(actions.cpu().numpy())
                frames.append(envs.render()[0])  # next-step autoreset: this is still the episode's last state
                if terminated[0] or truncated[0]:
                    break
    finally:
        envs.close()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return str(write_clip(frames, target, fps))


def write_clip(frames: list, path: Path, fps: float) -> Path:
    """Encode ``frames`` ([H, W, 3] uint8 each) to an mp4 at ``path``: libx264's ``ultrafast`` preset, one thread
    (it shares the machine with training), no audio."""
    from moviepy.video.io.ImageSequenceClip import ImageSequenceClip

    clip = ImageSequenceClip(frames, fps=fps)
    try:
        clip.write_videofile(str(path), codec="libx264", audio=False, preset="ultrafast", threads=1, logger=None)
    finally:
        clip.close()
    return path
