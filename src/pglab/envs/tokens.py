"""Token environments: GRPO and GSPO in their own habitat (a prompt, a generated answer, a verifier).

Each episode draws a prompt of ``prompt_length`` symbols from the env's seeded generator; the policy then emits
one token per step — a symbol ``0 … alphabet_size−1`` or the end token ``EOS = alphabet_size`` — until it emits
EOS or has emitted ``max_answer_length`` tokens. Both end the episode by **termination** (the answer is final;
nothing is cut by a time limit). The only reward comes at the end: 1 if the verifier accepts the answer (the
symbols before EOS equal ``solution(prompt)``), else 0; ``partial_credit=True`` gives the fraction of answer
positions that match instead (1 only for an exact answer).

Tasks (registered on import of this module; ``gym.make("pglab.envs.tokens:pglab/Reverse-v0")`` imports it):

    ``pglab/Reverse-v0``  the prompt reversed
    ``pglab/Sort-v0``     the prompt sorted ascending
    ``pglab/Add-v0``      two ``prompt_length/2``-digit numbers in base ``alphabet_size`` (least significant digit
                          first), their sum as ``prompt_length/2 + 1`` digits (least significant first)

Observation: a float32 Box vector ``[S + 1]`` with ``S = prompt_length + 1 + max_answer_length``:

    [ prompt (P) | SEP | generated tokens so far | PAD … | cursor ]

token ids: symbols ``0…K−1``, ``EOS = K``, ``SEP = K+1``, ``PAD = K+2`` (vocabulary ``K + 3``); ``cursor`` is the
index of the last filled position (``P`` at the first step), the position whose output chooses the next token.
Its bounds (low 0; high ``K+2`` on every token slot and ``S−1`` on the cursor) are what
``pglab.models.transformer.TransformerPolicy`` reads the layout from.

Held-out prompts: ``split="train"`` never draws a prompt whose hash falls in the held-out fraction,
``split="heldout"`` draws only those, ``split="all"`` (default) draws any. Train on ``train`` and evaluate on
``heldout`` for an exact-match score on prompts the policy never saw.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import gymnasium as gym
import numpy as np

__all__ = ["TokenTaskEnv", "ReverseEnv", "SortEnv", "AddEnv", "TASKS", "SPLITS", "teacher_batch",
           "exact_match"]

SPLITS = ("all", "train", "heldout")
_MIN_PROMPTS_FOR_SPLIT = 100
_MAX_REJECTIONS = 10_000


class TokenTaskEnv(gym.Env):
    """Base class: prompt → answer tokens → verifier. Subclasses define ``solution`` and ``solution_length``.

    Args:
        prompt_length: P symbols per prompt.
        alphabet_size: K symbols (K ≥ 2); actions are Discrete(K + 1), action K is EOS.
        max_answer_length: M, the most tokens one episode may emit (EOS included); default: the solution's
            length + 1 (room for the answer and its EOS). Must be ≥ the solution length.
        partial_credit: reward the fraction of matching positions instead of 0/1.
        split: ``all`` | ``train`` | ``heldout`` (see the module docstring).
        heldout_fraction: share of all prompts reserved for ``heldout``.
    """

    metadata = {"render_modes": ["ansi"]}
    task = "base"

    def __init__(self, prompt_length: int = 6, alphabet_size: int = 10, max_answer_length: int | None = None,
                 partial_credit: bool = False, split: str = "all", heldout_fraction: float = 0.1,
                 render_mode: str | None = None) -> None:
        if int(alphabet_size) != alphabet_size or alphabet_size < 2:
            raise ValueError(f"{self.task}: alphabet_size must be an integer >= 2, got {alphabet_size!r}: set "
                             "env.kwargs.alphabet_size=10 (for example)")
        if int(prompt_length) != prompt_length or prompt_length < 1:
            raise ValueError(f"{self.task}: prompt_length must be an integer >= 1, got {prompt_length!r}: set "
                             "env.kwargs.prompt_length=6 (for example)")
        self.prompt_length, self.alphabet_size = int(prompt_length), int(alphabet_size)
        self._check_prompt_length()
        need = self.solution_length()
        if max_answer_length is None:
            max_answer_length = need + 1
        if int(max_answer_length) != max_answer_length or max_answer_length < need:
            raise ValueError(f"{self.task}: max_answer_length={max_answer_length!r} is shorter than the {need} tokens "
                             f"the verifier needs for prompt_length={prompt_length}: set "
                             f"env.kwargs.max_answer_length={need + 1} (answer + EOS), or at least {need}")
        if split not in SPLITS:
            raise ValueError(f"{self.task}: split must be one of {SPLITS}, got {split!r}")
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"{self.task}: heldout_fraction must be in (0, 1), got {heldout_fraction!r}")
        num_prompts = self.alphabet_size ** self.prompt_length
        if split != "all" and num_prompts * min(heldout_fraction, 1 - heldout_fraction) < _MIN_PROMPTS_FOR_SPLIT / 10:
            raise ValueError(f"{self.task}: only {num_prompts} distinct prompts, too few to split into train and "
                             f"held-out sets: set env.kwargs.split=all, or raise prompt_length/alphabet_size")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got "
                             f"{render_mode!r}")
        self.max_answer_length = int(max_answer_length)
        self.partial_credit = bool(partial_credit)
        self.split, self.heldout_fraction = split, float(heldout_fraction)
        self.render_mode = render_mode
        K = self.alphabet_size
        self.EOS, self.SEP, self.PAD = K, K + 1, K + 2
        self.vocab_size = K + 3
        self.seq_len = self.prompt_length + 1 + self.max_answer_length  # S
        high = np.full(self.seq_len + 1, self.PAD, dtype=np.float32)
        high[-1] = self.seq_len - 1
        self.observation_space = gym.spaces.Box(0.0, high, dtype=np.float32)
        self.action_space = gym.spaces.Discrete(K + 1)
        self.prompt = np.zeros(self.prompt_length, dtype=np.int64)
        self.answer: list[int] = []
        self._obs = np.zeros(self.seq_len + 1, dtype=np.float32)
        self._done = True

    # -- the task (subclasses) -------------------------------------------------------------------
    def solution(self, prompt: np.ndarray) -> np.ndarray:
        """The answer the verifier accepts for ``prompt`` [P] (symbols only, no EOS)."""
        raise NotImplementedError

    def solution_length(self) -> int:
        """The longest answer ``solution`` can return for this prompt length."""
        return self.prompt_length

    def _check_prompt_length(self) -> None:
        """Raise ValueError if the task cannot use ``self.prompt_length``."""

    # -- verifier --------------------------------------------------------------------------------
    def verify(self, prompt: np.ndarray, answer) -> bool:
        """Whether ``answer`` (symbols before EOS) is exactly ``solution(prompt)``."""
        expected = self.solution(prompt)
        answer = np.asarray(answer, dtype=np.int64)
        return answer.shape == expected.shape and bool((answer == expected).all())

    def score(self, prompt: np.ndarray, answer) -> float:
        """The episode's reward: 0/1 from the verifier, or with ``partial_credit`` the share of positions that
        match, over max(len(answer), len(solution)) (so 1 only for an exact answer)."""
        if not self.partial_credit:
            return float(self.verify(prompt, answer))
        expected = self.solution(prompt)
        answer = np.asarray(answer, dtype=np.int64)
        n = min(len(answer), len(expected))
        matches = int((answer[:n] == expected[:n]).sum())
        return matches / max(len(answer), len(expected), 1)

    # -- prompts ---------------------------------------------------------------------------------
    def is_heldout(self, prompt: np.ndarray) -> bool:
        """Whether ``prompt`` belongs to the held-out set (a fixed hash of its symbols)."""
        code = zlib.crc32(np.asarray(prompt, dtype=np.int64).tobytes())
        return code % 1_000_003 < self.heldout_fraction * 1_000_003

    def sample_prompt(self, rng: np.random.Generator) -> np.ndarray:
        """A prompt [P] from ``rng`` in this env's split (rejection sampling, so train and held-out never meet)."""
        for _ in range(_MAX_REJECTIONS):
            prompt = rng.integers(0, self.alphabet_size, size=self.prompt_length, dtype=np.int64)
            if self.split == "all" or self.is_heldout(prompt) == (self.split == "heldout"):
                return prompt
        raise RuntimeError(f"{self.task}: no {self.split} prompt in {_MAX_REJECTIONS} draws")

    def teacher_tokens(self, prompt: np.ndarray) -> np.ndarray:
        """The token sequence a perfect policy emits: the solution, then EOS if there is room. [≤ M]"""
        tokens = self.solution(prompt)
        if len(tokens) < self.max_answer_length:
            tokens = np.append(tokens, self.EOS)
        return tokens

    def observation(self, prompt: np.ndarray, generated) -> np.ndarray:
        """The observation [S + 1] after emitting ``generated`` tokens for ``prompt``."""
        P = self.prompt_length
        obs = np.full(self.seq_len + 1, self.PAD, dtype=np.float32)
        obs[:P] = prompt
        obs[P] = self.SEP
        obs[P + 1: P + 1 + len(generated)] = generated
        obs[-1] = P + len(generated)
        return obs

    # -- gymnasium -------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.prompt = self.sample_prompt(self.np_random)
        self.answer = []
        self._obs = self.observation(self.prompt, [])
        self._done = False
        return self._obs.copy(), {}

    def step(self, action):
        if self._done:
            raise RuntimeError("step() called on a finished episode: call reset() first")
        action = int(action)
        if not 0 <= action <= self.EOS:
            raise ValueError(f"action must be in [0, {self.EOS}], got {action}")
        terminated = action == self.EOS
        if not terminated:
            self.answer.append(action)
        emitted = len(self.answer) + int(terminated)
        # the token goes into the history (EOS too) at position P + emitted, which becomes the cursor
        self._obs[self.prompt_length + emitted] = action
        self._obs[-1] = self.prompt_length + emitted
        terminated = terminated or emitted >= self.max_answer_length
        reward = 0.0
        info: dict = {}
        if terminated:
            self._done = True
            reward = self.score(self.prompt, self.answer)
            info = {"correct": self.verify(self.prompt, self.answer), "answer_length": len(self.answer)}
        return self._obs.copy(), reward, terminated, False, info

    def render(self):
        if self.render_mode == "ansi":
            return f"{self.prompt.tolist()} -> {self.answer}"
        return None


class ReverseEnv(TokenTaskEnv):
    """Answer: the prompt reversed."""

    task = "Reverse"

    def solution(self, prompt: np.ndarray) -> np.ndarray:
        return np.asarray(prompt, dtype=np.int64)[::-1].copy()


class SortEnv(TokenTaskEnv):
    """Answer: the prompt sorted ascending."""

    task = "Sort"

    def solution(self, prompt: np.ndarray) -> np.ndarray:
        return np.sort(np.asarray(prompt, dtype=np.int64))


class AddEnv(TokenTaskEnv):
    """Prompt: a then b, each ``prompt_length/2`` base-K digits, least significant first. Answer: a + b as
    ``prompt_length/2 + 1`` digits, least significant first (the top digit is the carry, possibly 0)."""

    task = "Add"

    def _check_prompt_length(self) -> None:
        if self.prompt_length % 2:
            raise ValueError(f"Add: prompt_length must be even (two operands of prompt_length/2 digits), got "
                             f"{self.prompt_length}: set env.kwargs.prompt_length={self.prompt_length + 1}")

    def solution_length(self) -> int:
        return self.prompt_length // 2 + 1

    def solution(self, prompt: np.ndarray) -> np.ndarray:
        prompt = np.asarray(prompt, dtype=np.int64)
        n, K = self.prompt_length // 2, self.alphabet_size
        digits, carry = [], 0
        for a, b in zip(prompt[:n], prompt[n:], strict=True):
            carry, digit = divmod(int(a) + int(b) + carry, K)
            digits.append(digit)
        digits.append(carry)
        return np.asarray(digits, dtype=np.int64)


TASKS: dict[str, type[TokenTaskEnv]] = {"Reverse": ReverseEnv, "Sort": SortEnv, "Add": AddEnv}

for _name, _cls in TASKS.items():
    if f"pglab/{_name}-v0" not in gym.registry:
        # no TimeLimit: episodes end by termination (EOS or max_answer_length), never by truncation
        gym.register(id=f"pglab/{_name}-v0", entry_point=f"pglab.envs.tokens:{_cls.__name__}")


def teacher_batch(env: TokenTaskEnv, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray]:
    """Teacher-forced trajectories of ``size`` verifier-correct answers to prompts from ``env``'s split.

    Returns (obs [size, M, S+1], actions [size, M], mask [size, M]): row (i, t) is the observation before the
    t-th token of answer i and that token; ``mask`` is 1 for the tokens of the answer (its EOS included)."""
    M = env.max_answer_length
    obs = np.zeros((size, M, env.seq_len + 1), dtype=np.float32)
    actions = np.zeros((size, M), dtype=np.int64)
    mask = np.zeros((size, M), dtype=np.float32)
    for i in range(size):
        prompt = env.sample_prompt(rng)
        tokens = env.teacher_tokens(prompt)
        full = env.observation(prompt, tokens)
        for t in range(len(tokens)):
            obs[i, t] = full
            # the observation before token t: the history up to t, PAD after, cursor at P + t
            obs[i, t, env.prompt_length + 1 + t: env.seq_len] = env.PAD
            obs[i, t, -1] = env.prompt_length + t
        actions[i, : len(tokens)] = tokens
        mask[i, : len(tokens)] = 1.0
    return obs, actions, mask


def exact_match(act: Callable[[np.ndarray], np.ndarray], env_id: str, kwargs: dict, num_prompts: int,
                seed: int) -> tuple[float, float]:
    """(exact-match rate, mean answer length) of ``act`` (obs [N, S+1] → tokens [N]) on ``num_prompts`` prompts.

    Prompt i is the first prompt of an env reset with seed ``seed + i``: a fixed set for a fixed seed. Pass
    ``kwargs`` with ``split="heldout"`` for held-out accuracy; partial credit is switched off here."""
    kwargs = {**kwargs, "partial_credit": False}
    envs = gym.make_vec(env_id, num_envs=num_prompts, vectorization_mode="sync", **kwargs)
    try:
        obs, _ = envs.reset(seed=[seed + i for i in range(num_prompts)])
        correct = np.zeros(num_prompts, dtype=bool)
        lengths = np.zeros(num_prompts, dtype=np.int64)
        finished = np.zeros(num_prompts, dtype=bool)
        while not finished.all():
            obs, reward, terminated, truncated, info = envs.step(np.asarray(act(obs)))
            ended = (terminated | truncated) & ~finished
            if not ended.any():
                continue
            correct[ended] = reward[ended] == 1.0
            lengths[ended] = info["answer_length"][ended]
            finished |= ended
        return float(correct.mean()), float(lengths.mean())
    finally:
        envs.close()
