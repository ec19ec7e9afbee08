"""EnvPool back-end (``env.vectorization=envpool``): EnvPool's C++ env pool as a gymnasium 1.x VectorEnv.

``pip install 'pglab[envpool]'``. ``make_vector_env`` calls ``make_envpool_vector_env`` and then wraps the
result with pglab's usual vector wrappers (episode statistics, normalisation), like every other back-end.

Semantics, as measured on envpool 0.8.4 (``tests/integration/test_envpool.py`` checks each against gymnasium):

- **Autoreset is next-step**, like pglab's gymnasium envs: on the step where env i ends, ``obs[i]`` is its true
  final observation; on the next call env i resets, ignores the action and returns its first observation with
  reward 0, both flags False and ``info["elapsed_step"][i] == 0``. ``metadata["autoreset_mode"]`` says so.
- **Time limits** come from EnvPool's own ``max_episode_steps`` (CartPole-v1 500, MuJoCo 1000, Atari 27000
  agent steps); ``env.max_episode_steps`` is passed to it. A time-limit end is ``truncated=True,
  terminated=False``. One difference from gymnasium: when an episode terminates *on* the time-limit step,
  EnvPool reports it as truncated only (its gymnasium API computes ``terminated = done & ~trunc``), where
  gymnasium reports ``terminated=True, truncated=True``; pglab then bootstraps that one step from V(final obs)
  instead of 0. With CartPole's 500-step limit this needs an episode that fails on exactly step 500.
- **Seeding**: EnvPool seeds its envs once, at construction (env i gets ``seed + i``). ``reset(seed=s)`` with an
  int, or with the list ``[s, s+1, …]``, rebuilds the pool with seed ``s``; ``reset()`` without a seed resets
  every env from where its generator is. Per-env seeds of any other pattern (the episode collector's groups
  share a seed) cannot be honoured and are refused, naming ``env.vectorization=sync``. Start states differ from
  gymnasium's for the same seed (different generators), so the same seed does not give the same episodes.
- **Ids**: ``ALE/Breakout-v5`` (or ``ale_py:ALE/Breakout-v5``) → EnvPool's ``Breakout-v5``; a MuJoCo ``-v5``
  id EnvPool lacks (``HalfCheetah-v5``) → its ``-v4`` (a warning says so; v4 and v5 differ in details such as
  default frame/contact settings of some models, see gymnasium's MuJoCo changelog). Other ids EnvPool does not
  have are refused with ``env.vectorization=sync``.
- **MuJoCo action bounds**: EnvPool declares ``Box(-inf, inf)``; this adapter declares gymnasium's bounds (the
  models' ctrlrange, e.g. ±1 for HalfCheetah) so pglab's ClipAction clips as it does on gymnasium.
- **Atari**: EnvPool always preprocesses in C++ (84×84 grey, frame skip, no-op starts, frame stack). With
  ``env.wrappers: [{_target_: pglab.envs.atari.atari_wrapper, ...}]`` (conf/env/atari.yaml) that wrapper's options are
  translated to EnvPool's (``frame_stack``→``stack_num``, ``clip_rewards``→``reward_clip``, ``fire_reset``→
  ``use_fire_reset``, …) so ``env=atari env.vectorization=envpool`` gives the same observation layout [4, 84, 84]
  uint8. Any other ``env.wrappers`` (single gymnasium envs) cannot run inside EnvPool and are refused.
- **numpy 2**: the envpool 0.8.4 wheels were built against numpy 1; under numpy 2 every array they return has
  all-zero strides (each reads as its first element repeated). The data underneath is intact and C-contiguous,
  so this module re-views each array with the right strides before use — before EnvPool's own Python layer
  combines ``done``/``trunc`` (which is why it reads the raw state list rather than ``pool.step``).
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

__all__ = ["make_envpool_vector_env", "envpool_task_id", "EnvPoolVectorEnv"]

_MUJOCO = ("Ant", "HalfCheetah", "Hopper", "Humanoid", "HumanoidStandup", "InvertedDoublePendulum",
           "InvertedPendulum", "Pusher", "Reacher", "Swimmer", "Walker2d")
# gymnasium's MuJoCo action bounds (the models' ctrlrange); EnvPool declares Box(-inf, inf), which would leave
# pglab's ClipAction nothing to clip and let the control cost see unclipped actions
_MUJOCO_ACTION_BOUND = {"Ant": 1.0, "HalfCheetah": 1.0, "Hopper": 1.0, "Humanoid": 0.4, "HumanoidStandup": 0.4,
                        "InvertedDoublePendulum": 1.0, "InvertedPendulum": 3.0, "Pusher": 2.0, "Reacher": 1.0,
                        "Swimmer": 1.0, "Walker2d": 1.0}
_FALLBACK = "use env.vectorization=sync (or async) for this env"
# pglab.envs.atari.atari_wrapper keyword → EnvPool Atari option (value transform)
_ATARI_WRAPPER_TO_ENVPOOL = {
    "frame_stack": ("stack_num", int), "frame_skip": ("frame_skip", int), "noop_max": ("noop_max", int),
    "episodic_life": ("episodic_life", bool), "clip_rewards": ("reward_clip", bool),
    "fire_reset": ("use_fire_reset", bool), "screen_size": ("img_height", int), "grayscale_obs": ("gray_scale", bool),
}


def _import_envpool():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # envpool imports the unmaintained `gym`, which warns about numpy 2
            import envpool
    except ImportError as err:
        raise ImportError("env.vectorization=envpool needs envpool: pip install 'pglab[envpool]' "
                          f"(or {_FALLBACK})") from err
    return envpool


def envpool_task_id(env_id: str, available: list[str] | None = None) -> str:
    """EnvPool's task id for a gymnasium id (``ALE/Breakout-v5`` → ``Breakout-v5``); ValueError with the fix if none."""
    if available is None:
        available = list(_import_envpool().list_all_envs())
    name = env_id.split(":", 1)[1] if ":" in env_id else env_id
    if name.startswith("ALE/"):
        name = name[len("ALE/"):]
    if name in available:
        return name
    base, _, version = name.rpartition("-v")
    if base in _MUJOCO and version.isdigit() and int(version) > 4 and f"{base}-v4" in available:
        warnings.warn(f"EnvPool has no {name}; using its {base}-v4 (same task, gymnasium's v4 model and reward "
                      "settings)", stacklevel=2)
        return f"{base}-v4"
    raise ValueError(f"EnvPool has no environment {env_id!r} (EnvPool ids look like CartPole-v1, Pendulum-v1, "
                     f"HalfCheetah-v4, Breakout-v5): {_FALLBACK}")


def _is_atari_wrapper(spec: Any) -> bool:
    target = spec if isinstance(spec, str) else dict(spec).get("_target_", "")
    return target == "pglab.envs.atari.atari_wrapper"


def _envpool_kwargs(cfg, task_id: str, spec_config) -> dict[str, Any]:
    """EnvPool options from the env config (kwargs, max_episode_steps, the Atari wrapper's options)."""
    kwargs = dict(cfg.kwargs)
    atari = "use_fire_reset" in spec_config  # only EnvPool's Atari tasks have this option
    if cfg.wrappers:
        if not (atari and len(cfg.wrappers) == 1 and _is_atari_wrapper(cfg.wrappers[0])):
            raise ValueError("env.wrappers wrap single gymnasium envs, which EnvPool (C++) cannot run; on Atari only "
                             "pglab.envs.atari.atari_wrapper is translated to EnvPool's own preprocessing: set "
                             f"env.wrappers=[] or {_FALLBACK}")
        options = {} if isinstance(cfg.wrappers[0], str) else dict(cfg.wrappers[0])
        options.pop("_target_", None)
        for key, value in options.items():
            if key not in _ATARI_WRAPPER_TO_ENVPOOL:
                raise ValueError(f"atari_wrapper option {key}={value!r} has no EnvPool equivalent: {_FALLBACK}")
            name, cast = _ATARI_WRAPPER_TO_ENVPOOL[key]
            kwargs[name] = cast(value)
            if key == "screen_size":
                kwargs["img_width"] = int(value)
        kwargs.setdefault("use_fire_reset", False)  # atari_wrapper's default (EnvPool's own default is True)
        kwargs.setdefault("reward_clip", True)
    if atari:
        # gymnasium's ALE options: the frame skip lives in the preprocessing (frame_skip) under EnvPool
        kwargs.pop("frameskip", None)
        kwargs.pop("max_num_frames_per_episode", None)
    if cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = int(cfg.max_episode_steps)
    unknown = sorted(set(kwargs) - set(spec_config) - {"num_threads", "thread_affinity_offset"})
    if unknown:
        raise ValueError(f"env.kwargs {unknown} are not options of EnvPool's {task_id} (its options: "
                         f"{sorted(k for k in spec_config if k not in ('num_envs', 'batch_size', 'seed'))}); "
                         f"or {_FALLBACK}")
    return kwargs


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides = [itemsize] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * shape[d + 1]
    return tuple(strides)


def _restride(array):
    """The array with C-contiguous strides (envpool 0.8.4 under numpy 2 returns zero strides; see the docstring)."""
    if not isinstance(array, np.ndarray) or array.ndim == 0 or array.size <= 1:
        return array
    strides = _c_strides(array.shape, array.itemsize)
    if array.strides == strides:
        return array
    return np.lib.stride_tricks.as_strided(array, array.shape, strides)  # a view; its base keeps EnvPool's buffer


class EnvPoolVectorEnv(gym.vector.VectorEnv):
    """An EnvPool pool (synchronous: every step steps all ``num_envs``) with gymnasium 1.x VectorEnv semantics."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, task_id: str, num_envs: int, kwargs: dict[str, Any], env_id: str | None = None) -> None:
        self._envpool = _import_envpool()
        self.task_id, self.num_envs, self._kwargs = task_id, int(num_envs), dict(kwargs)
        spec = self._envpool.make_spec(task_id, num_envs=self.num_envs, **self._kwargs)
        self.single_observation_space = spec.gymnasium_observation_space
        self.single_action_space = spec.gymnasium_action_space
        bound = _MUJOCO_ACTION_BOUND.get(task_id.rpartition("-v")[0])
        space = self.single_action_space
        if bound is not None and isinstance(space, gym.spaces.Box) and not np.all(np.isfinite(space.high)):
            self.single_action_space = gym.spaces.Box(-bound, bound, space.shape, space.dtype)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "envpool_task_id": task_id,
                         "max_episode_steps": int(spec.config.max_episode_steps)}
        self.env_id = env_id or task_id
        self._pool = None
        self._seed: int | None = None
        self._ids = np.arange(self.num_envs, dtype=np.int32)

    def _build(self, seed: int) -> None:
        if self._pool is not None:
            self._pool.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._pool = self._envpool.make(self.task_id, env_type="gymnasium", num_envs=self.num_envs,
                                            batch_size=self.num_envs, seed=int(seed), **self._kwargs)
        self._seed = int(seed)

    def _seed_of(self, seed) -> int | None:
        if seed is None or isinstance(seed, (int, np.integer)):
            return None if seed is None else int(seed)
        seeds = [int(s) for s in seed]
        if len(seeds) != self.num_envs or seeds != list(range(seeds[0], seeds[0] + self.num_envs)):
            raise ValueError(f"EnvPool seeds env i with seed + i when it is built and cannot take the per-env seeds "
                             f"{seeds[:4]}{'…' if len(seeds) > 4 else ''} (e.g. groups of envs sharing a start state, "
                             "collector.kind=episodes): use env.vectorization=sync")
        return seeds[0]

    def reset(self, *, seed=None, options: dict[str, Any] | None = None):
        """Reset every env; a seed rebuilds the pool with it (EnvPool seeds only at construction)."""
        if options:
            raise NotImplementedError("EnvPoolVectorEnv.reset takes no options (partial resets are not supported)")
        seed = self._seed_of(seed)
        if seed is not None or self._pool is None:
            self._build(seed if seed is not None else int(np.random.SeedSequence().entropy % 2**31))
        self._pool._reset(self._ids)
        obs, info = self._recv(reset=True)
        return obs, info

    def step(self, actions):
        """One step of every env; an env that ended last step resets now (reward 0, flags False)."""
        if self._pool is None:
            raise RuntimeError("EnvPoolVectorEnv.step before reset: call reset() first")
        self._pool.send(np.asarray(actions))
        return self._recv(reset=False)

    def _recv(self, reset: bool):
        state = [_restride(value) for value in self._pool._recv()]
        out = self._pool._to(state, reset, True)
        info = out[-1]
        env_ids = np.asarray(info.get("env_id", self._ids))
        order = None if np.array_equal(env_ids, self._ids) else np.argsort(env_ids)
        info = {k: np.asarray(v) for k, v in info.items() if k != "players" and not isinstance(v, dict)}
        info["elapsed_step"] = np.asarray(info["elapsed_step"])
        arrays = [np.asarray(x) for x in out[:-1]]
        if order is not None:  # sync pools return envs in id order; reorder if a build ever does not
            arrays = [x[order] for x in arrays]
            info = {k: v[order] if v.shape[:1] == (self.num_envs,) else v for k, v in info.items()}
        if reset:
            return arrays[0], info
        obs, reward, terminated, truncated = arrays
        return obs, reward.astype(np.float64, copy=False), terminated.astype(bool), truncated.astype(bool), info

    def close_extras(self, **kwargs) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def make_envpool_vector_env(cfg, num_envs: int) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``cfg.id`` in one EnvPool pool, as a next-step-autoreset gymnasium VectorEnv."""
    if int(num_envs) < 1:
        raise ValueError(f"env.num_envs must be >= 1, got {num_envs}")
    if cfg.record_video_dir is not None:
        raise ValueError(f"EnvPool does not render frames for video: {_FALLBACK} (or set eval.video=false)")
    envpool = _import_envpool()
    task_id = envpool_task_id(cfg.id, list(envpool.list_all_envs()))
    spec_config = envpool.make_spec(task_id).config._asdict()
    return EnvPoolVectorEnv(task_id, int(num_envs), _envpool_kwargs(cfg, task_id, spec_config), env_id=cfg.id)
