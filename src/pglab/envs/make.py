"""Vector environments from config, built from gymnasium's own vector envs and vector wrappers.

Autoreset mode — chosen deliberately: **next-step** (gymnasium's default). On the step where env i ends,
``obs[i]`` *is* the true final observation, so the collector's next policy call evaluates V(final obs)
and that value becomes the truncation bootstrap of the ending step (``next_values[t] = values[t+1]``).
On the following call env i resets: it ignores the action and returns reward 0 with both flags False.
That row is not a transition; the collector marks it ``valid = False`` and it is masked out of the
estimators, the advantage statistics, the loss and the episode metrics.
Next-step is also the only mode that the vector ``NormalizeObservation`` wrapper and CartPole's native
vector env accept, which is why it is the one used everywhere.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers import vector as vw

__all__ = ["EnvConfig", "make_vector_env", "resolve_env_id", "merge_running_stats", "make_frozen_envs",
           "freeze_normalization", "env_config_from_dict", "check_observation_space", "check_action_space",
           "check_env_api",
           "find_wrapper", "require_video_support", "run_episodes", "rms_state",
           "load_rms", "VECTORIZATIONS"]

VECTORIZATIONS = ("auto", "native", "sync", "async", "envpool")


@dataclass
class EnvConfig:
    """Mirror of ``conf/env/*.yaml``."""

    id: str = "CartPole-v1"
    num_envs: int = 8
    vectorization: str = "auto"
    normalize_obs: bool = False
    normalize_reward: bool = False
    reward_gamma: float = 0.99
    clip_obs: float | None = 10.0
    clip_reward: float | None = 10.0
    clip_actions: bool = True
    max_episode_steps: int | None = None
    flatten_obs: bool = False  # gymnasium's FlattenObservation: one-hot Discrete, flat Tuple/Dict/image observations
    # single-env wrappers applied inside each copy (gym.make_vec(wrappers=...)): dotted paths of callables env → env,
    # or {_target_: dotted path, **kwargs} (e.g. pglab.envs.atari.atari_wrapper for Atari preprocessing)
    wrappers: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    record_video_dir: str | None = None  # eval only: record episodes with gymnasium's RecordVideo (needs moviepy)


def require_video_support(env_id: str | None = None) -> None:
    """Fail at start-up, naming the extra, when video is asked for without moviepy or the env's renderer."""
    try:
        import moviepy  # noqa: F401
    except ImportError as err:
        raise ImportError("video recording needs moviepy: pip install 'pglab[video]' (or set eval.video=false)") \
            from err
    if env_id is not None:
        # rendering needs the env's own optional dependency (pygame for classic control, mujoco, ...)
        _headless_sdl()
        try:
            env = gym.make(resolve_env_id(env_id), render_mode="rgb_array")
            env.reset(seed=0)
            frame = env.render()
            env.close()
            if frame is None:  # an env that accepts render_mode but draws nothing
                raise ValueError("its render() returned no frame")
        except gym.error.DependencyNotInstalled as err:
            raise ImportError(f"rendering {env_id} for video needs an optional dependency: {err} "
                              "(pip install 'pglab[video]' covers classic control; or set eval.video=false)") from err
        # e.g. an env that renders text only (render_modes: ansi), or whose constructor takes no render_mode
        except (ValueError, TypeError, gym.error.Error) as err:
            raise ImportError(f"{env_id} cannot render frames for video ({err}): set eval.video=false") from err


def _resolve_mode(spec: gym.envs.registration.EnvSpec, vectorization: str) -> str:
    if vectorization not in VECTORIZATIONS:
        raise ValueError(f"env.vectorization must be one of {VECTORIZATIONS}, got {vectorization!r}")
    has_native = spec.vector_entry_point is not None
    if vectorization == "native" and not has_native:
        raise ValueError(f"env.vectorization=native but {spec.id} registers no native vector env; "
                         "use env.vectorization=sync or async")
    if vectorization == "auto":
        return "vector_entry_point" if has_native else "sync"
    return "vector_entry_point" if vectorization == "native" else vectorization


def make_vector_env(cfg: EnvConfig, num_envs: int | None = None,
                    vectorization: str | None = None) -> gym.vector.VectorEnv:
    """Build ``num_envs`` copies of ``cfg.id`` with episode statistics and the configured normalisation.

    Wrapper order (inner → outer): episode statistics on the *raw* rewards, action clipping (Box),
    observation normalisation + clip, reward normalisation + clip.
    """
    if (vectorization or cfg.vectorization) == "envpool":
        from pglab.envs.envpool import make_envpool_vector_env  # optional back-end: pip install 'pglab[envpool]'

        envs = make_envpool_vector_env(cfg, num_envs or cfg.num_envs)
        return _wrap_vector_env(envs, cfg)
    env_id = resolve_env_id(cfg.id)
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as err:
        raise ValueError(f"env.id={cfg.id!r} is not a registered gymnasium environment ({err}); a custom env "
                         "registered by your own module is selected as env.id=your_module:YourEnv-v0") from err
    mode = _resolve_mode(spec, vectorization or cfg.vectorization)
    n = num_envs or cfg.num_envs
    kwargs = dict(cfg.kwargs)
    if cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    vector_kwargs = {} if mode == "vector_entry_point" else {"autoreset_mode": AutoresetMode.NEXT_STEP}
    if cfg.record_video_dir is not None:
        kwargs["render_mode"] = "rgb_array"
        _headless_sdl()
    if cfg.wrappers and mode == "vector_entry_point":
        raise ValueError(f"env.wrappers wrap single envs, but {cfg.id}'s native vector env has none: set "
                         "env.vectorization=sync or async")
    wrappers = [_single_env_wrapper(w) for w in cfg.wrappers] or None
    envs = gym.make_vec(env_id, num_envs=n, vectorization_mode=mode, vector_kwargs=vector_kwargs, wrappers=wrappers,
                        **kwargs)
    if cfg.record_video_dir is not None:
        # one clip per episode of the first env (as CleanRL and rl-zoo3 record), not a mosaic of every env
        envs = vw.RecordVideo(envs, cfg.record_video_dir, episode_trigger=lambda _: True, name_prefix="eval",
                              record_first_only=True)
    if envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP) != AutoresetMode.NEXT_STEP:
        raise ValueError(f"{cfg.id}'s vector env does not use next-step autoreset, which pglab's collector "
                         "relies on; use env.vectorization=sync")
    return _wrap_vector_env(envs, cfg)


def _headless_sdl() -> None:
    """rgb_array frames need no window. Without a display SDL (pygame, the classic-control renderer) tries Wayland
    first and prints "error: XDG_RUNTIME_DIR is invalid or not set" before falling back to its offscreen driver:
    ask for that one directly, and keep pygame's import banner out of the run's output."""
    import os

    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")


def _single_env_wrapper(spec):
    """A wrapper callable from a dotted path, or from {_target_: path, **kwargs} (bound with functools.partial)."""
    import functools

    from hydra.utils import get_method

    if isinstance(spec, str):
        return get_method(spec)
    spec = dict(spec)
    return functools.partial(get_method(spec.pop("_target_")), **spec)


def _wrap_vector_env(envs, cfg: EnvConfig):
    """pglab's vector wrappers, the same for every back-end (see make_vector_env)."""
    envs = vw.RecordEpisodeStatistics(envs)
    if cfg.flatten_obs:
        try:
            envs = vw.FlattenObservation(envs)
        except (NotImplementedError, TypeError, ValueError):  # e.g. Text: no fixed-size flat form
            check_observation_space(envs.single_observation_space, cfg.id)
            raise
    check_observation_space(envs.single_observation_space, cfg.id)
    check_action_space(envs.single_action_space, cfg.id)
    if isinstance(envs.single_action_space, gym.spaces.Box) and cfg.clip_actions:
        envs = vw.ClipAction(envs)
    if cfg.normalize_obs:
        envs = vw.NormalizeObservation(envs)
        if cfg.clip_obs is not None:
            bound = float(cfg.clip_obs)
            envs = vw.TransformObservation(envs, lambda obs: np.clip(obs, -bound, bound), envs.observation_space)
    if cfg.normalize_reward:
        envs = vw.NormalizeReward(envs, gamma=cfg.reward_gamma)
        if cfg.clip_reward is not None:
            envs = vw.ClipReward(envs, -float(cfg.clip_reward), float(cfg.clip_reward))
    return envs


def resolve_env_id(env_id: str) -> str:
    """gymnasium's ``module:EnvId`` syntax: import ``module`` (which registers the env), return ``EnvId``."""
    if ":" not in env_id:
        return env_id
    module, name = env_id.split(":", 1)
    try:
        importlib.import_module(module)
    except ImportError as err:
        extra = EXTRA_FOR_MODULE.get(module.split(".")[0])
        fix = f"install it: pip install 'pglab[{extra}]'" if extra else \
            "it must be importable (installed, or on PYTHONPATH) and register the env with gymnasium.register"
        raise ValueError(f"env.id={env_id!r}: cannot import module {module!r} ({err}); {fix}") from err
    return name


# env modules an extra of pglab's installs (pyproject.toml's optional-dependencies): their refusal names it
EXTRA_FOR_MODULE = {"ale_py": "atari"}


def check_observation_space(space: gym.Space, env_id: str) -> None:
    """Refuse, naming the fix, an observation space that pglab's networks cannot read (they take a float Box)."""
    if isinstance(space, gym.spaces.Box):
        return
    if isinstance(space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary,
                          gym.spaces.Tuple, gym.spaces.Dict)):
        fix = "set env.flatten_obs=true (one-hot encodes Discrete parts, concatenates Tuple/Dict parts)"
    else:
        fix = "wrap the env so it returns a Box observation (pglab's networks take fixed-size float vectors)"
    raise ValueError(f"{env_id} has observation space {space}, which pglab's networks cannot read: {fix}")


def check_action_space(space: gym.Space, env_id: str) -> None:
    """Refuse, naming the space, an action space pglab's policy heads do not produce: they are a categorical over
    ``Discrete(n)`` (actions 0..n-1) and a diagonal Gaussian over a 1-D float ``Box``. Dispatching on the space's
    type, not on its ``.n`` / ``.shape``, is what keeps MultiDiscrete from passing as a Box and MultiBinary as a
    Discrete."""
    if isinstance(space, gym.spaces.Discrete):
        if int(space.start) != 0:
            raise ValueError(f"{env_id} has action space {space}, which starts at {int(space.start)}: pglab's "
                             "categorical head samples 0..n-1; shift the actions with a gymnasium ActionWrapper "
                             "(env.wrappers) so the space starts at 0")
        return
    if isinstance(space, gym.spaces.Box):
        if len(space.shape) != 1 or not np.issubdtype(space.dtype, np.floating):
            raise ValueError(f"{env_id} has action space {space}: pglab's Gaussian head takes a 1-D float Box; "
                             "reshape or cast the actions with a gymnasium ActionWrapper (env.wrappers)")
        return
    kinds = {gym.spaces.MultiDiscrete: "several categorical actions (a factorised categorical head)",
             gym.spaces.MultiBinary: "several binary actions (a Bernoulli head)"}
    needs = next((need for kind, need in kinds.items() if isinstance(space, kind)), "a head for this kind of space")
    raise ValueError(f"{env_id} has action space {space} ({type(space).__name__}), which pglab's policies cannot "
                     f"act in: they have a categorical head for Discrete and a Gaussian head for a 1-D Box, and this "
                     f"space needs {needs}, which pglab does not have; wrap the env so its actions are Discrete or a "
                     "1-D Box (e.g. enumerate the combinations as one Discrete)")


def check_env_api(cfg: EnvConfig) -> None:
    """One env of ``cfg`` reset and stepped once, outside the vector env, to refuse before training what would
    otherwise fail in the first rollout with a traceback from deep inside gymnasium: the pre-0.26 API (``reset``
    returning only ``obs``, ``step`` returning 4 values) and observations that are not numbers (strings, objects).

    Native vector envs and EnvPool are built by gymnasium / EnvPool themselves and skipped."""
    if cfg.vectorization == "envpool":
        return
    env_id = resolve_env_id(cfg.id)
    try:
        spec = gym.spec(env_id)
    except gym.error.Error:
        return  # make_vector_env names the unknown id
    if _resolve_mode(spec, cfg.vectorization) == "vector_entry_point":
        return
    kwargs = dict(cfg.kwargs)
    if cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    env = gym.make(env_id, disable_env_checker=True, **kwargs)
    for wrapper in cfg.wrappers:
        env = _single_env_wrapper(wrapper)(env)
    old_api = (f"{cfg.id} follows the pre-0.26 gym API (reset returns only the observation, step returns 4 values "
               "(obs, reward, done, info)); pglab uses gymnasium's: port the env to return (obs, info) from reset and "
               "(obs, reward, terminated, truncated, info) from step, or wrap it with shimmy's "
               "GymV21CompatibilityV0 (pip install shimmy), gymnasium's compatibility layer for old-API envs")
    try:
        try:
            result = env.reset(seed=0)
            if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
                raise ValueError(old_api)
            obs = result[0]
            result = env.step(env.action_space.sample())
            if not (isinstance(result, tuple) and len(result) == 5):
                raise ValueError(old_api)
        except (ValueError, TypeError) as err:
            # gymnasium's own wrappers (TimeLimit, ...) unpack 5 values and fail first: ask the env itself
            if str(err) != old_api and _is_old_api(env.unwrapped):
                raise ValueError(old_api) from err
            raise
        for observation in (obs, result[0]):
            kind = np.asarray(observation).dtype.kind
            if kind not in "biuf":
                raise ValueError(f"{cfg.id} returns observations of dtype {np.asarray(observation).dtype} "
                                 f"({type(observation).__name__}), which pglab's networks cannot read (they take "
                                 "fixed-size numbers): encode them as a numeric Box with an ObservationWrapper "
                                 "(env.wrappers), e.g. token ids for text")
    finally:
        env.close()


def _is_old_api(env) -> bool:
    """Whether a bare env answers reset with a lone observation or step with 4 values (gym < 0.26)."""
    try:
        result = env.reset(seed=0)
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
            return True
        result = env.step(env.action_space.sample())
        return isinstance(result, tuple) and len(result) == 4
    except Exception:  # noqa: BLE001 - a diagnosis only: whatever else fails is reported as it is
        return False


def env_config_from_dict(env: dict, **overrides) -> EnvConfig:
    """An EnvConfig from a stored config's ``env`` section (a checkpoint's), ignoring keys this version lacks."""
    known = {f.name for f in dataclasses.fields(EnvConfig)} - {"record_video_dir"}
    unknown = sorted(set(env) - known - {"record_video_dir"})
    if unknown:
        print(f"pglab: ignoring env settings this version of pglab does not know: {unknown}", file=sys.stderr)
    return EnvConfig(**{**{k: v for k, v in env.items() if k in known}, **overrides})


def freeze_normalization(envs: gym.vector.VectorEnv, stats: dict, rewards: bool = False) -> None:
    """Load normalisation statistics (``rms_state`` dicts under ``obs_rms`` / ``return_rms``) into ``envs`` and stop
    them from updating. Observations always; rewards only with ``rewards=True`` (evaluation reports raw returns,
    the gradient probe needs the value head's scale). ValueError naming the key when ``envs`` normalise something
    ``stats`` lacks."""
    targets = [(vw.NormalizeObservation, "obs_rms", "obs_rms", "env.normalize_obs")]
    if rewards:
        targets.append((vw.NormalizeReward, "return_rms", "return_rms", "env.normalize_reward"))
    for wrapper_type, key, attribute, switch in targets:
        wrapper = find_wrapper(envs, wrapper_type)
        if wrapper is None:
            continue
        if key not in stats:
            raise ValueError(f"the run used {switch}=true but no statistics were saved for it ({key})")
        load_rms(getattr(wrapper, attribute), stats[key])
        wrapper.update_running_mean = False


def make_frozen_envs(cfg: EnvConfig, num_envs: int, stats: dict, rewards: bool = False) -> gym.vector.VectorEnv:
    """The one way pglab builds an env whose normalisation is frozen at given statistics: periodic evaluation
    (the training statistics), ``pglab.tools.evaluate`` and ``pglab.tools.probe`` (a checkpoint's). Reward
    normalisation is dropped unless ``rewards``."""
    cfg = dataclasses.replace(cfg, normalize_reward=cfg.normalize_reward and rewards)
    envs = make_vector_env(cfg, num_envs=num_envs)
    try:
        freeze_normalization(envs, stats, rewards)
    except ValueError:
        envs.close()
        raise
    return envs


def merge_running_stats(start: tuple, ranks: list[tuple]) -> tuple:
    """The statistics one RunningMeanStd would hold had it seen every rank's observations since ``start``.

    Each rank's (mean, var, count) is ``start`` updated with that rank's own data; its increment is recovered by
    inverting the parallel-variance update (Chan et al.), and all increments are combined with ``start``.
    mean/var are arrays of the statistic's shape; count a float. Returns (mean, var, count)."""
    m0, v0, n0 = (np.asarray(start[0], np.float64), np.asarray(start[1], np.float64), float(start[2]))
    groups = [(m0, v0 * n0, n0)]  # (mean, M2, count) per group: the shared start, then each rank's increment
    for mean_r, var_r, n_r in ranks:
        mean_r, var_r, n_r = np.asarray(mean_r, np.float64), np.asarray(var_r, np.float64), float(n_r)
        n_b = n_r - n0
        if n_b <= 0:
            continue
        mean_b = (n_r * mean_r - n0 * m0) / n_b
        m2_b = n_r * var_r - n0 * v0 - (mean_b - m0) ** 2 * n0 * n_b / n_r
        groups.append((mean_b, np.maximum(m2_b, 0.0), n_b))
    count = sum(g[2] for g in groups)
    mean = sum(g[0] * g[2] for g in groups) / count
    m2 = sum(g[1] + g[2] * (g[0] - mean) ** 2 for g in groups)
    return mean, m2 / count, count


def rms_state(rms) -> dict:
    """A gymnasium RunningMeanStd as tensors and a float (checkpoint-friendly, weights_only-loadable)."""
    import torch

    return {"mean": torch.as_tensor(rms.mean), "var": torch.as_tensor(rms.var), "count": float(rms.count)}


def load_rms(rms, state: dict) -> None:
    """Inverse of ``rms_state``: overwrite ``rms`` in place."""
    import torch

    rms.mean = np.asarray(torch.as_tensor(state["mean"]).numpy(), dtype=rms.mean.dtype)
    rms.var = np.asarray(torch.as_tensor(state["var"]).numpy(), dtype=rms.var.dtype)
    rms.count = float(state["count"])


def find_wrapper(envs: gym.vector.VectorEnv, wrapper_type: type) -> Any | None:
    """The first wrapper of ``wrapper_type`` in the chain (e.g. to read or freeze normalisation statistics)."""
    current = envs
    while current is not None:
        if isinstance(current, wrapper_type):
            return current
        current = getattr(current, "env", None)
    return None


def run_episodes(envs: gym.vector.VectorEnv, act, num_episodes: int, seed: int,
                 max_steps: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """Run ``envs`` (with episode statistics) until ``num_episodes`` episodes are done; (returns, lengths) raw.

    ``act(obs [N, D] tensor) -> actions [N]`` is called once per vector step. Each env contributes an equal
    quota of its *first* episodes (⌈num_episodes / N⌉), so short episodes are not over-represented the way
    "the first K episodes to finish anywhere" would over-represent them.
    """
    import torch

    n = envs.num_envs
    quota = -(-num_episodes // n)
    returns: list[list[float]] = [[] for _ in range(n)]
    lengths: list[list[int]] = [[] for _ in range(n)]
    obs, _ = envs.reset(seed=seed)
    for _ in range(max_steps):
        actions = act(torch.as_tensor(obs, dtype=torch.float32))
        obs, _, terminated, truncated, info = envs.step(actions.cpu().numpy())
        done = terminated | truncated
        if done.any() and "episode" in info:
            finished = info.get("_episode", done)
            for i in np.flatnonzero(finished):
                if len(returns[i]) < quota:
                    returns[i].append(float(info["episode"]["r"][i]))
                    lengths[i].append(int(info["episode"]["l"][i]))
            if all(len(r) >= quota for r in returns):
                break
    flat_returns = [r for env_returns in returns for r in env_returns][:num_episodes]
    flat_lengths = [length for env_lengths in lengths for length in env_lengths][:num_episodes]
    return np.asarray(flat_returns, dtype=np.float64), np.asarray(flat_lengths, dtype=np.int64)
