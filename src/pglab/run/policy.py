"""``policy = pglab.load_policy(path); action = policy(obs)``: a trained checkpoint as a function of one
gymnasium observation.

The network and the environment come from the run's own config stored in the checkpoint (weights-only loading,
targets checked against the allowlist, as ``pglab.tools.evaluate``). The policy acts on the observation of the
run's env as ``policy.make_env()`` builds it (``gymnasium.make`` of the id with the run's kwargs, time limit and
per-env wrappers); pglab's vector-level observation transforms (flattening, normalisation frozen at the
checkpoint's statistics, clipping) are applied inside, exactly as during training and evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["load_policy", "Policy"]


class Policy:
    """The checkpoint's actor: ``policy(obs)`` → the action (the mode of π unless ``deterministic=False``).

    ``obs``: one observation of ``make_env()``'s env, or a batch of them (leading axis). Returns one action (an
    ``int`` for a Discrete action space, a float array clipped to a Box), or an array of them for a batch."""

    def __init__(self, ckpt: dict, path: Path, deterministic: bool = True) -> None:
        import torch

        from pglab.tools.evaluate import build_checkpoint_policy, make_eval_envs

        self.path, self.deterministic = path, deterministic
        self.config = ckpt["pglab"]["config"]
        self.env_steps_trained = int(ckpt["state_dict"].get("env_steps", 0))
        # a one-env vector env as evaluation builds it: its observation wrappers are the training transform
        self._envs = make_eval_envs(ckpt, num_envs=1)
        self.network = build_checkpoint_policy(ckpt, self._envs)
        self._transforms = _observation_transforms(self._envs)
        base = self._envs.unwrapped
        self.observation_space = base.single_observation_space
        self.action_space = self._envs.single_action_space
        self._torch = torch

    @property
    def env_id(self) -> str:
        return self.config["env"]["id"]

    def make_env(self, **kwargs):
        """One env of the run's config (``render_mode="human"`` etc. pass through), unnormalised."""
        import gymnasium as gym

        from pglab.envs.make import _single_env_wrapper, env_config_from_dict, resolve_env_id

        cfg = env_config_from_dict(self.config["env"])
        make_kwargs = {**cfg.kwargs, **kwargs}
        if cfg.max_episode_steps is not None:
            make_kwargs.setdefault("max_episode_steps", cfg.max_episode_steps)
        env = gym.make(resolve_env_id(cfg.id), **make_kwargs)
        for wrapper in cfg.wrappers:
            env = _single_env_wrapper(wrapper)(env)
        return env

    def __call__(self, obs):
        obs = np.asarray(obs)
        single_shape = tuple(self.observation_space.shape or ())
        single = obs.shape == single_shape
        if not single and tuple(obs.shape[1:]) != single_shape:
            raise ValueError(f"{self.env_id}: an observation of shape {single_shape} (or a batch of them) was "
                             f"expected, got shape {obs.shape}; pglab.load_policy(...).make_env() builds the env "
                             "whose observations this policy reads")
        batch = obs[None] if single else obs
        for transform in self._transforms:
            batch = transform(batch)
        torch = self._torch
        with torch.inference_mode():
            actions = self.network.act(torch.as_tensor(np.asarray(batch), dtype=torch.float32),
                                       deterministic=self.deterministic).actions.cpu().numpy()
        import gymnasium as gym

        if isinstance(self.action_space, gym.spaces.Box):
            actions = np.clip(actions, self.action_space.low, self.action_space.high)  # as training's ClipAction
        elif isinstance(self.action_space, gym.spaces.Discrete):
            actions = actions.astype(np.int64)
        if single:
            return int(actions[0]) if actions.ndim == 1 and actions.dtype.kind == "i" else actions[0]
        return actions

    def close(self) -> None:
        self._envs.close()

    def __repr__(self) -> str:
        return f"Policy({self.env_id}, {self.env_steps_trained} env steps of training, from {self.path})"


def _observation_transforms(envs) -> list:
    """The ``observations`` methods of the vector observation wrappers around ``envs``, innermost first."""
    import gymnasium as gym

    transforms, env = [], envs
    while isinstance(env, gym.vector.VectorWrapper):
        if isinstance(env, gym.vector.VectorObservationWrapper):
            transforms.append(env.observations)
        env = env.env
    return transforms[::-1]


def load_policy(path: str | Path, deterministic: bool = True) -> Policy:
    """The policy of a checkpoint (``.../checkpoints/last.ckpt``) or of a run folder (its ``last.ckpt``)."""
    from pglab.run.checkpoints import check_finite_weights, load_checkpoint

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (a run folder holds checkpoints/last.ckpt)")
    ckpt = load_checkpoint(path)
    check_finite_weights(ckpt, path)
    return Policy(ckpt, path, deterministic=deterministic)
