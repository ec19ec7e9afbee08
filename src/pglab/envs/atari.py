"""Atari preprocessing for ``env.wrappers`` (``env=atari``) and a tiny pixel env for tests (``PixelMatch``).

``atari_wrapper`` builds, inside each vector-env copy, the usual DQN/PPO Atari stack from gymnasium's own
wrappers where gymnasium has them:

- gymnasium ``AtariPreprocessing``: no-op starts (up to ``noop_max``), frame skip ``frame_skip`` with a max over
  the last two frames, ``screen_size``² grey frames. It needs the ALE env itself to skip no frames
  (``env.kwargs.frameskip=1``, as conf/env/atari.yaml sets).
- ``EpisodicLife`` (pglab; gymnasium has none — its ``terminal_on_life_loss`` restarts the *game* at every
  lost life under a vector env's autoreset): a lost life ends the episode for the learner (terminated, no
  bootstrap) but the game goes on; only a real game over resets the emulator.
- ``FireReset`` (pglab; gymnasium has none): press FIRE after every reset, for games that wait for it.
- reward clipping to its sign, via gymnasium's ``TransformReward(np.sign)`` (gymnasium's ``ClipReward`` clamps
  instead: 0.5 would stay 0.5).
- gymnasium ``FrameStackObservation``: the last ``frame_stack`` frames → [frame_stack, 84, 84] uint8.

What pglab logs as ``rollout/episode_return`` is what its vector RecordEpisodeStatistics sees: the *clipped*
reward summed over one *life* when ``episodic_life=true``. The raw game score of every finished game is in the
vector env's ``info["game_episode"]`` (a RecordEpisodeStatistics innermost, before any of the above).

Registering ALE envs in gymnasium 1.x takes ``gym.register_envs(ale_py)``; ``env.id: ale_py:ALE/Breakout-v5``
does that through pglab's ``module:EnvId`` syntax (importing ``ale_py`` registers its envs), and
``atari_wrapper`` imports it too.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

__all__ = ["atari_wrapper", "EpisodicLife", "FireReset", "PixelMatchEnv"]


class EpisodicLife(gym.Wrapper):
    """A lost life is the end of an episode (terminated) for the learner; the emulator resets only at game over."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.lives, self.game_over = 0, True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs):
        if self.game_over:
            obs, info = self.env.reset(**kwargs)
        else:  # a life was lost: carry on from here with a no-op step
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self.game_over = False
        self.lives = self.env.unwrapped.ale.lives()
        return obs, info


class FireReset(gym.Wrapper):
    """Press FIRE (then action 2) after a reset, for games that wait for it (Breakout's ball launch)."""

    def reset(self, **kwargs):
        self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(2)
        if terminated or truncated:
            obs, info = self.env.reset(**kwargs)
        return obs, info


def atari_wrapper(env: gym.Env, frame_stack: int = 4, episodic_life: bool = False, clip_rewards: bool = True,
                  frame_skip: int = 4, noop_max: int = 30, screen_size: int = 84, grayscale_obs: bool = True,
                  fire_reset: bool = False) -> gym.Env:
    """The Atari stack above around one ALE env (made with ``frameskip=1``); [frame_stack, 84, 84] uint8 frames."""
    try:
        import ale_py  # noqa: F401  (the ALE must be importable; importing it registers the ALE/… ids)
        import cv2  # noqa: F401  (AtariPreprocessing resizes with OpenCV)
    except ImportError as err:
        raise ImportError(f"Atari needs the ALE and OpenCV ({err}): pip install 'pglab[atari]'") from err
    from gymnasium import wrappers as gw

    frameskip = getattr(env.unwrapped, "_frameskip", 1)
    if frame_skip > 1 and frameskip != 1:
        raise ValueError(f"atari_wrapper skips frames itself (frame_skip={frame_skip}) but the ALE env already skips "
                         f"{frameskip}: set env.kwargs.frameskip=1 (conf/env/atari.yaml does)")
    env = gw.RecordEpisodeStatistics(env, stats_key="game_episode")  # raw game scores, before clipping and lives
    env = gw.AtariPreprocessing(env, noop_max=noop_max, frame_skip=frame_skip, screen_size=screen_size,
                             grayscale_obs=grayscale_obs)
    if episodic_life:
        env = EpisodicLife(env)
    if fire_reset and "FIRE" in env.unwrapped.get_action_meanings():
        env = FireReset(env)
    if clip_rewards:
        env = gw.TransformReward(env, lambda r: float(np.sign(r)))
    if frame_stack > 1:
        env = gw.FrameStackObservation(env, frame_stack)
    return env


class PixelMatchEnv(gym.Env):
    """A tiny image bandit for tests: [3, 16, 16] uint8; one side of the image lights up, say which (0 left, 1 right).

    Each step shows a fresh random side; reward 1 for naming it, 0 otherwise; an episode is ``length`` steps
    (then truncated). A policy that cannot see scores 0.5 per step on average; one that reads the image, 1.
    The three channels differ (red: the lit side, green: noise, blue: constant) so colour matters too.
    """

    metadata = {"render_modes": []}
    observation_space = gym.spaces.Box(0, 255, (3, 16, 16), np.uint8)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length: int = 8) -> None:
        self.length, self.t, self.side = length, 0, 0

    def _obs(self) -> np.ndarray:
        img = np.zeros((3, 16, 16), dtype=np.uint8)
        cols = slice(0, 8) if self.side == 0 else slice(8, 16)
        img[0, :, cols] = 255
        img[1] = self.np_random.integers(0, 64, size=(16, 16), dtype=np.uint8)
        img[2] = 32
        return img

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.side = 0, int(self.np_random.integers(2))
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.side)
        self.t += 1
        self.side = int(self.np_random.integers(2))
        return self._obs(), reward, False, self.t >= self.length, {}


gym.register("pglab/PixelMatch-v0", entry_point=PixelMatchEnv)
