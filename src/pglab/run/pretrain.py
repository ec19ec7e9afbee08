"""Lightning callbacks for the token tasks (``pglab.envs.tokens``): a supervised warm start and held-out accuracy.

Both are selected from the config's ``callbacks:`` dict, e.g.::

    callbacks:
      pretrain: {_target_: pglab.run.pretrain.SupervisedWarmStart, steps: 300}
      heldout: {_target_: pglab.run.pretrain.HeldOutAccuracy, every_n_epochs: 5}

The warm start is the "SFT before RL" step of the GRPO recipe: maximise log π(teacher token | history) on
verifier-correct answers that the env class writes itself (``solution(prompt)``), before the first rollout.
"""

from __future__ import annotations

import time

import gymnasium as gym
import lightning as L
import numpy as np
import torch

from pglab.envs.tokens import TokenTaskEnv, exact_match, teacher_batch

__all__ = ["SupervisedWarmStart", "HeldOutAccuracy", "token_env_from_config"]


def token_env_from_config(env_cfg) -> TokenTaskEnv:
    """One unwrapped token env built from an ``EnvConfig`` (its id and kwargs); ValueError if it is not one."""
    env = gym.make(env_cfg.id, **dict(env_cfg.kwargs)).unwrapped
    if not isinstance(env, TokenTaskEnv):
        raise ValueError(f"env.id={env_cfg.id} is not a pglab.envs.tokens task: the supervised warm start and "
                         "held-out accuracy need one (e.g. env=reverse), or remove them from callbacks")
    return env


class SupervisedWarmStart(L.Callback):
    """Before the first rollout, ``steps`` Adam steps of cross-entropy on teacher answers (``on_fit_start``).

    Args:
        steps: optimizer steps (0: no warm start, the policy starts from scratch).
        lr: Adam learning rate (its own optimizer; the RL optimizer's state is untouched).
        batch_size: answers per step (each contributes its tokens, EOS included).
        seed: drives the prompts; they come from the training env's split, so held-out prompts stay unseen.
        max_grad_norm: gradient clipping (None: off).

    Skipped on a resumed run (the checkpoint already holds the trained policy). A frozen GRPO reference policy
    (β > 0) is reset to the warm-started weights, as a reference model is the SFT model in the GRPO recipe.
    Logs ``pretrain/loss``, ``pretrain/token_accuracy`` (teacher-forced, last step) and ``pretrain/seconds``.
    """

    def __init__(self, steps: int = 0, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
                 max_grad_norm: float | None = 1.0) -> None:
        if steps < 0 or batch_size < 1 or not lr > 0:
            raise ValueError(f"SupervisedWarmStart needs steps >= 0, batch_size >= 1 and lr > 0, got steps={steps}, "
                             f"batch_size={batch_size}, lr={lr}")
        self.steps, self.lr, self.batch_size, self.seed = int(steps), float(lr), int(batch_size), int(seed)
        self.max_grad_norm = max_grad_norm
        self.seconds = 0.0
        self.history: list[tuple[int, float, float]] = []  # (step, loss, token accuracy)

    def on_fit_start(self, trainer: L.Trainer, module) -> None:
        if self.steps == 0 or trainer.ckpt_path is not None or int(module.env_steps) > 0:
            return
        start = time.perf_counter()
        env = token_env_from_config(trainer.datamodule.env_cfg)
        policy = module.policy
        optimizer = torch.optim.Adam(policy.parameters(), lr=self.lr)
        rng = np.random.default_rng(self.seed)
        policy.train()
        for step in range(self.steps):
            obs, actions, mask = teacher_batch(env, rng, self.batch_size)
            rows = mask.reshape(-1) > 0
            obs_t = torch.from_numpy(obs.reshape(-1, obs.shape[-1])[rows]).to(module.device)
            actions_t = torch.from_numpy(actions.reshape(-1)[rows]).to(module.device)
            out = policy.evaluate(obs_t, actions_t)
            loss = -out.logp.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), self.max_grad_norm)
            optimizer.step()
            if step == self.steps - 1 or step % 50 == 0:
                accuracy = float((out.dist_params.argmax(-1) == actions_t).float().mean())
                self.history.append((step, float(loss.detach()), accuracy))
        if module.reference is not None:
            module.reference.load_state_dict(policy.state_dict())
        self.seconds = time.perf_counter() - start
        _, last_loss, last_accuracy = self.history[-1]
        module.emit_metrics({"pretrain/loss": last_loss, "pretrain/token_accuracy": last_accuracy,
                             "pretrain/seconds": self.seconds})


class HeldOutAccuracy(L.Callback):
    """Exact-match rate of the greedy policy on a fixed set of held-out prompts, before the first rollout, every
    ``every_n_epochs`` rollouts and after the last.

    Args:
        every_n_epochs: rollouts between evaluations.
        prompts: size of the evaluation set (prompt i: an env of ``split`` reset with seed ``seed + i``).
        seed: first seed of the evaluation set.
        split: ``heldout`` (prompts training never draws when the training env has ``split=train``) or ``all``.
        stop_at: end training once the exact-match rate reaches this (None: never).

    Logs ``eval/heldout_exact_match`` and ``eval/heldout_answer_length``. ``history`` keeps, per evaluation, the env
    steps, ``seconds`` (wall-clock since setup minus the time spent evaluating; the warm start included),
    ``cpu_seconds`` (the same in this process's CPU time: steadier than wall-clock on a shared machine), the exact
    match and the mean answer length.
    """

    def __init__(self, every_n_epochs: int = 10, prompts: int = 256, seed: int = 1_000_000_000,
                 split: str = "heldout", stop_at: float | None = None) -> None:
        if every_n_epochs < 1 or prompts < 1:
            raise ValueError(f"HeldOutAccuracy needs every_n_epochs >= 1 and prompts >= 1, got {every_n_epochs}, "
                             f"{prompts}")
        self.every_n_epochs, self.prompts, self.seed, self.split = every_n_epochs, prompts, seed, split
        self.stop_at = stop_at
        self.history: list[dict] = []
        self._start: float | None = None
        self._start_cpu = 0.0
        self._eval_seconds = 0.0
        self._eval_cpu_seconds = 0.0

    def setup(self, trainer: L.Trainer, module, stage: str) -> None:
        if self._start is None:
            self._start, self._start_cpu = time.perf_counter(), time.process_time()

    def evaluate(self, trainer: L.Trainer, module, env_steps: int | None = None) -> float:
        begin, begin_cpu = time.perf_counter(), time.process_time()
        env_cfg = trainer.datamodule.env_cfg
        actor = module.actor()

        def act(obs: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                obs_t = torch.as_tensor(obs, dtype=torch.float32, device=module.device)
                return actor.act(obs_t, deterministic=True).actions.cpu().numpy()

        accuracy, length = exact_match(act, env_cfg.id, {**dict(env_cfg.kwargs), "split": self.split}, self.prompts,
                                       self.seed)
        now, now_cpu = time.perf_counter(), time.process_time()
        env_steps = int(module.env_steps) if env_steps is None else env_steps
        self.history.append({"env_steps": env_steps, "seconds": now - self._start - self._eval_seconds,
                             "cpu_seconds": now_cpu - self._start_cpu - self._eval_cpu_seconds,
                             "exact_match": accuracy, "answer_length": length})
        self._eval_seconds += now - begin
        self._eval_cpu_seconds += now_cpu - begin_cpu
        module.emit_metrics({"eval/heldout_exact_match": accuracy, "eval/heldout_answer_length": length})
        return accuracy

    def on_train_epoch_start(self, trainer: L.Trainer, module) -> None:
        if trainer.current_epoch == 0 and not self.history:
            # the first rollout is already collected (Lightning loads data before this hook), but no update has
            # happened: this is the starting policy (after the warm start, if any), recorded at 0 env steps
            self.evaluate(trainer, module, env_steps=0)

    def on_train_epoch_end(self, trainer: L.Trainer, module) -> None:
        last = trainer.should_stop or (trainer.max_epochs not in (None, -1)
                                       and trainer.current_epoch + 1 >= trainer.max_epochs)
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 or last:
            accuracy = self.evaluate(trainer, module)
            if self.stop_at is not None and accuracy >= self.stop_at:
                trainer.should_stop = True
