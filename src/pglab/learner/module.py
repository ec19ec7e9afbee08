"""The LightningModule: networks, surrogate, optimiser and every piece of learnable or adaptive state.

Each update minimises surrogate + c_v·value loss − c_e·entropy on one minibatch; one Lightning training step
runs a whole rollout's updates (manual optimisation). Adaptive β (a buffer of the surrogate), the frozen
reference policy (GRPO's KL) and the env-step counter live here, so a checkpoint of this module is a checkpoint
of the learner.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from torch import Tensor

from pglab.rollout.datamodule import Batch, RolloutStats
from pglab.core.collectives import all_ranks, all_reduce_mean_
from pglab.accel.lean import GRADIENT_MODES, LeanUpdate, clip_flat_, fused_adam_step, unsupported
from pglab.models.mlp import ActorCritic, ActOutput
from pglab.core.surrogates import Surrogate, SurrogateInput, value_loss

__all__ = ["PolicyGradientModule", "NonFiniteError", "NONFINITE_MODES"]

NONFINITE_MODES = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """Training produced (or was fed) a NaN/inf; the message names what and where."""


class PolicyGradientModule(L.LightningModule):
    """Policy-gradient learner; the algorithm is whatever ``surrogate`` (and the data's estimator/baseline) is.

    Args:
        policy: actor(-critic) network.
        surrogate: a ``pglab.core.surrogates.Surrogate``.
        lr, adam_eps: Adam settings; ``anneal_lr`` decays lr linearly to 0 over ``total_env_steps``.
        vf_coef, ent_coef: weights of the value loss and the entropy bonus.
        value_clip: clip range of the PPO value loss around the old value (None: plain MSE).
        normalize_advantages: per-minibatch (A − mean)/(std + 1e-8) over the real rows.
        target_kl: stop the remaining minibatches of the epoch once approx-KL exceeds it (None: never).
        reference_refresh_every: copy the policy into the frozen reference every M epochs (0: never after
            the start). Only used when the surrogate needs a reference (GRPO with β > 0).
        max_grad_norm: clip the global gradient norm of every update (None: no clipping).
        clip_per_group: clip the policy's and the value's gradients to ``max_grad_norm`` each instead of their joint
            norm (the value gradient is often 10–100× the policy's, so one global clip mostly shrinks the policy
            step). Needs a policy with ``gradient_groups`` (ActorCritic).
        nonfinite: what a non-finite loss or gradient does: ``stop`` the run (the default; the parameters of the
            last finite update are kept and checkpointed) or ``skip`` that update and count it
            (``train/skipped_updates``). Non-finite parameters always stop the run.
        compile: ``torch.compile`` the per-minibatch loss (forward and backward); pays only for long runs (see
            benchmarks/compile_cost.py) — compile time is tens of seconds on a CPU.
        lightning_optimizer: route updates through Lightning's optimizer wrappers even on one process at 32-bit
            (they are used anyway under several processes or mixed precision, where they are needed).
        gradients: how a minibatch's gradient is computed. ``lean``: hand-derived gradients without autograd
            (``pglab.accel.lean``; ~3x cheaper per update, for the MLP ActorCritic with the clip, importance or reinforce
            surrogate); ``autograd``: autograd through the modular loss (every component); ``auto``: lean where it
            applies, else autograd. Both give the same loss and gradient up to float rounding.
    """

    def __init__(self, policy: ActorCritic, surrogate: Surrogate, lr: float = 2.5e-4, adam_eps: float = 1e-5,
                 anneal_lr: bool = True, total_env_steps: int = 100_000, vf_coef: float = 0.5,
                 ent_coef: float = 0.0, value_clip: float | None = None, normalize_advantages: bool = True,
                 target_kl: float | None = None, reference_refresh_every: int = 0,
                 max_grad_norm: float | None = 0.5, clip_per_group: bool = False, nonfinite: str = "stop",
                 compile: bool = False, lightning_optimizer: bool = False, gradients: str = "auto") -> None:
        super().__init__()
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"learner.nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
        if gradients not in GRADIENT_MODES:
            raise ValueError(f"learner.gradients must be one of {GRADIENT_MODES}, got {gradients!r}")
        # why the lean update cannot run here (None: it can); refused now when asked for explicitly
        self._lean_unsupported = unsupported(policy, surrogate, clip_per_group=clip_per_group, compile=compile)
        if gradients == "lean" and self._lean_unsupported:
            raise ValueError(f"learner.gradients=lean does not cover {self._lean_unsupported}: set "
                             "learner.gradients=auto (or autograd) to use the autograd update")
        self.save_hyperparameters(ignore=["policy", "surrogate"])
        self.automatic_optimization = False
        self.policy = policy
        self.surrogate = surrogate
        self.reference = None
        if surrogate.needs_reference:
            self.reference = copy.deepcopy(policy).requires_grad_(False).eval()
        self.register_buffer("env_steps", torch.zeros((), dtype=torch.long))
        self.updates = 0  # optimizer steps taken (equals trainer.global_step; kept for checkpoints and tests)
        self._epoch_stats: dict[str, list[Tensor]] = defaultdict(list)
        self.last_rollout: RolloutStats | None = None
        self._rollout_batch: Batch | None = None  # the flat rollout, for the post-update KL
        self._stop_epoch = False
        self.stop_signal: int | None = None  # set by a signal handler: stop at the next update boundary
        self.skipped_updates = 0  # non-finite updates skipped (learner.nonfinite=skip)
        self._group_norm: dict[str, Tensor] = {}
        self._compiled_loss = None  # learner.compile: torch.compile(loss_and_stats), built at the first update
        self._lean: LeanUpdate | None = None  # built at fit start when the lean update applies
        self._lean_stats: list[tuple[Tensor, Tensor]] = []  # each lean update's diagnostics (see LeanUpdate.stats)
        self.update_path = "autograd"
        self.skipped_rollouts = 0  # rollouts without a single real transition (nothing to learn from)
        # linear LR annealing runs from (env step t0, lr fraction f0) to (total_env_steps, 0); a resumed run with
        # another budget re-anchors at its resume point, so the schedule continues instead of jumping
        self.lr_anchor = (0, 1.0)
        self._start_time: float | None = None
        self._start_steps = 0
        self.run_config: dict | None = None  # the resolved Hydra config, saved in checkpoints (evaluate, resume)
        self.run_choices: dict | None = None  # the Hydra group choices (algo=..., env=...), for resume's messages
        self.wandb_id: str | None = None  # the W&B run a resumed run continues

    # -- the collection interface (called by the DataModule) ----------------------------------------
    def rollout_policy(self) -> tuple[Callable[[Tensor], ActOutput], Callable[[Tensor], Tensor]]:
        """(act, value) for one rollout: a fused snapshot of the current weights (see ActorCritic.fused_actor)."""
        actor = self.policy.fused_actor()
        device = self.device

        @torch.inference_mode()
        def act(obs: Tensor) -> ActOutput:
            return actor.act(obs.to(device, non_blocking=True))

        @torch.inference_mode()
        def value(obs: Tensor) -> Tensor:
            return actor.value(obs.to(device, non_blocking=True))

        return act, value

    # -- several processes (DDP): counters, metrics and decisions are global, the same on every rank -----
    @property
    def world_size(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def _sum_over_ranks(self, values: Tensor) -> Tensor:
        """Elementwise sum over ranks (identity on one process). [K] → [K]"""
        if self.world_size == 1:
            return values
        return self.trainer.strategy.reduce(values.to(self.device), reduce_op="sum").cpu()

    def record_rollout(self, stats: RolloutStats, batch: Batch | None = None) -> None:
        """What one rollout measured, and its flat batch (None when it held no real transition).

        Under DDP every rank calls this at the same point: env steps are summed and episodes gathered over ranks,
        so the budget, the LR schedule, the x-axis and the episode metrics are global."""
        if self.world_size > 1:  # one exchange per rollout
            everyone = all_ranks((stats.env_steps, stats.episode_returns.tolist(), stats.episode_lengths.tolist()))
            stats = RolloutStats(sum(e[0] for e in everyone),
                                 torch.tensor([r for e in everyone for r in e[1]], dtype=torch.float32),
                                 torch.tensor([n for e in everyone for n in e[2]], dtype=torch.float32),
                                 stats.explained_variance, stats.advantage_mean, stats.advantage_std)
        self.last_rollout = stats
        self._rollout_batch = batch
        self.env_steps += stats.env_steps
        if batch is None:
            self.skipped_rollouts += 1

    # -- checkpoints: everything a resumed run needs beyond the state_dict and the optimiser ---------
    @staticmethod
    def _rng_state() -> dict:
        """This process's torch/numpy/python RNG states as tensors and plain values (weights_only-loadable)."""
        name, keys, pos, has_gauss, cached = np.random.get_state()
        version, internal, gauss = random.getstate()
        return {"torch": torch.get_rng_state(),
                "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
                "python": [version, torch.tensor(internal, dtype=torch.int64), gauss]}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        rng = self._rng_state()
        # under DDP every rank saves (Lightning calls this on all ranks; rank 0 writes): each restores its own
        rng_per_rank = all_ranks(rng) if self.world_size > 1 else None
        checkpoint["pglab"] = {
            "config": self.run_config,
            "choices": self.run_choices,
            "wandb_id": self.wandb_id,
            "updates": self.updates,
            "lr_anchor": list(self.lr_anchor),
            "total_env_steps": int(self.hparams.total_env_steps),
            "skipped": [self.skipped_updates, self.skipped_rollouts],
            "rng": rng,
            "rng_per_rank": rng_per_rank,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        payload = checkpoint.get("pglab", {})
        self.updates = payload.get("updates", 0)
        self.skipped_updates, self.skipped_rollouts = payload.get("skipped", (0, 0))
        t0, f0 = payload.get("lr_anchor", (0, 1.0))
        old_total = payload.get("total_env_steps", checkpoint.get("hyper_parameters", {}).get("total_env_steps"))
        steps = int(checkpoint.get("state_dict", {}).get("env_steps", 0))
        if old_total is not None and int(old_total) != int(self.hparams.total_env_steps):
            # another budget: continue from the LR the old schedule had reached, down to 0 at the new total
            reached = self._lr_fraction(steps, int(t0), float(f0), int(old_total))
            if reached > 0 or not self.hparams.anneal_lr:
                self.lr_anchor = (steps, reached)
            else:
                # the old schedule ended at 0: continuing it would train at lr 0, a silent no-op
                self.lr_anchor = (0, 1.0)
                print(f"pglab: the checkpoint's learning rate had annealed to 0 at its budget of {old_total} env "
                      f"steps; the extended run anneals from lr·(1 − t/{self.hparams.total_env_steps}) instead")
        else:
            self.lr_anchor = (int(t0), float(f0))
        rng = payload.get("rng")
        per_rank = payload.get("rng_per_rank")
        rank = self._trainer.global_rank if self._trainer is not None else 0
        if per_rank and rank < len(per_rank):
            rng = per_rank[rank]
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            name, keys, pos, has_gauss, cached = rng["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
            version, internal, gauss = rng["python"]
            random.setstate((version, tuple(int(x) for x in internal.tolist()), gauss))

    # -- optimisation -------------------------------------------------------------------------------
    def configure_optimizers(self):
        # the fused kernel is ~4× faster than the default for these small networks (CPU and CUDA alike)
        return torch.optim.Adam(self.policy.parameters(), lr=self.hparams.lr, eps=self.hparams.adam_eps, fused=True)

    @staticmethod
    def _lr_fraction(steps: int, t0: int, f0: float, total: int) -> float:
        """Linear decay from fraction f0 at env step t0 to 0 at ``total``."""
        if total <= t0:
            return 0.0
        return max(0.0, f0 * (total - steps) / (total - t0))

    def on_fit_start(self) -> None:
        """Choose the update (``learner.gradients``): the lean one where it applies, once the strategy is known."""
        reason = self._lean_unsupported
        if reason is None and self._through_lightning:
            reason = "updates through Lightning's optimizer wrappers (mixed precision, trainer.strategy=ddp or " \
                     "learner.lightning_optimizer=true)"
        mode = self.hparams["gradients"]
        if mode == "lean" and reason is not None:
            raise ValueError(f"learner.gradients=lean does not cover {reason}: set learner.gradients=auto or "
                             "autograd")
        self._lean = None
        if mode != "autograd" and reason is None:
            self._lean = LeanUpdate(self.policy, self.surrogate, vf_coef=self.hparams.vf_coef,
                                    ent_coef=self.hparams.ent_coef, value_clip=self.hparams.value_clip,
                                    normalize_advantages=self.hparams.normalize_advantages)
        self.update_path = "lean" if self._lean is not None else "autograd"

    def on_train_epoch_start(self) -> None:
        self._stop_epoch = False
        if self._start_time is None:
            self._start_time, self._start_steps = time.perf_counter(), int(self.env_steps)
        if self.hparams.anneal_lr:
            # linear decay by env steps (epochs have no fixed size under the episode collector)
            frac = self._lr_fraction(int(self.env_steps), *self.lr_anchor, int(self.hparams.total_env_steps))
            for group in self.optimizers().param_groups:
                group["lr"] = self.hparams.lr * frac
        # the parameters at the start of the rollout's updates: what a non-finite parameter rolls back to
        self._finite_snapshot = None
        if self.reference is not None and self.hparams.reference_refresh_every > 0 \
                and self.current_epoch > 0 and self.current_epoch % self.hparams.reference_refresh_every == 0:
            self.reference.load_state_dict(self.policy.state_dict())

    def on_train_batch_start(self, batch: list[Batch], batch_idx: int) -> int | None:
        return -1 if self._stop_epoch else None  # -1 ends the epoch: target-KL early stop

    def training_step(self, minibatches: list[Batch], batch_idx: int) -> None:
        """One Lightning step = one or more optimizer steps, one per minibatch (``learner.minibatches_per_step``).

        Manual optimisation: Lightning's per-step machinery costs ~0.6 ms here, as much as the update itself on
        CartPole-sized minibatches, so by default one Lightning step holds a whole rollout's K·M updates.
        """
        optimizer = self.optimizers()
        max_norm = self.hparams.max_grad_norm
        params = [p for p in self.policy.parameters() if p.requires_grad]
        world, through_lightning = self.world_size, self._through_lightning  # fixed within a step
        prepared = None  # the lean update's per-minibatch constants, for all of the step's minibatches at once
        for i, batch in enumerate(minibatches):
            # the per-group gradient norms are a diagnostic: taken on a rollout's first update (≈ 6% of an update's
            # cost), on every update only when clip_per_group needs them
            first = i == 0 and batch_idx == 0
            if self._stop_epoch or (self.stop_signal is not None and world == 1):
                # target-KL early stop (decided on the global KL, so every rank stops together), or SIGTERM/SIGINT
                # on one process; under DDP a signal is acted on at the rollout's end, agreed by every rank
                break
            if self._finite_snapshot is None:
                self._finite_snapshot = [p.detach().clone() for p in params]
            if self._lean is not None:  # never through Lightning's wrappers (see on_fit_start)
                if prepared is None:
                    prepared = self._lean.prepare(minibatches)
                self._lean_update(batch, prepared[i], optimizer.optimizer, first)
                self._count_direct_step()
                continue
            loss = self.minibatch_loss(batch)
            if through_lightning:
                # through Lightning: precision plugins, DDP's gradient all-reduce (prepared by manual_backward
                # before every backward, so several updates per step stay synchronised), trainer.global_step
                optimizer.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                if first or self.hparams.clip_per_group:
                    self._record_group_norms()
                if max_norm is not None and not self.hparams.clip_per_group:
                    self.clip_gradients(optimizer, gradient_clip_val=max_norm, gradient_clip_algorithm="norm")
                    grad_norm = self._grad_norm(params, None)
                else:
                    grad_norm = self._grad_norm(params, max_norm)
                if self._update_is_finite(float(loss.detach()), float(grad_norm)):
                    optimizer.step()
            else:
                # the torch optimizer directly: ~0.5 ms less per update (11% of a CartPole PPO run); used only on
                # one process at 32-bit precision, where Lightning's wrappers add nothing
                torch_optimizer = optimizer.optimizer
                torch_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if world > 1:  # trainer=ddp (GradientAllReduceDDP): average the gradients over ranks
                    for p in params:
                        if p.grad is None:
                            p.grad = torch.zeros_like(p)
                    all_reduce_mean_([p.grad for p in params])
                if first or self.hparams.clip_per_group:
                    self._record_group_norms()
                grad_norm = self._grad_norm(params, max_norm)
                if self._update_is_finite(float(loss.detach()), float(grad_norm)):
                    torch_optimizer.step()
                self._count_direct_step()
                continue
            self.updates += 1
        self._check_parameters(params)

    def _count_direct_step(self) -> None:
        """An update that bypassed Lightning's optimizer wrapper: keep trainer.global_step counting updates
        (checkpointing and max_steps rely on it) and count it."""
        step_progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        step_progress.increment_ready()
        step_progress.increment_completed()
        self.updates += 1

    def _lean_update(self, batch: Batch, prepared: tuple, torch_optimizer: torch.optim.Optimizer,
                     first: bool) -> None:
        """One update with ``pglab.accel.lean``'s hand-derived gradient: the direct path's steps, on the flat gradient."""
        lean = self._lean
        loss, diagnostics = lean(batch, prepared)
        self._lean_stats.append(diagnostics)
        target_kl = self.hparams.target_kl
        if target_kl is not None and self._global_mean(diagnostics[0][lean.approx_kl_row]) > target_kl:
            self._stop_epoch = True  # this update still happens (as in CleanRL); the rest of the epoch does not
        if self.world_size > 1:  # trainer=ddp (GradientAllReduceDDP): one all-reduce of the flat gradient
            all_reduce_mean_([lean.flat_grad])
        if first:
            self._record_group_norms()
        loss_value, grad_norm = clip_flat_(lean.flat_grad, self.hparams.max_grad_norm, loss)
        if self._update_is_finite(loss_value, grad_norm):
            fused_adam_step(torch_optimizer)

    @property
    def _through_lightning(self) -> bool:
        """Updates through Lightning's optimizer wrappers: when asked, under mixed precision (gradient scaling) and
        under a strategy that wraps the module in DistributedDataParallel (Lightning's plain ``ddp``, whose
        reducer is driven by ``manual_backward``). pglab's ``trainer=ddp`` does not wrap: it averages the
        gradients itself on the direct path."""
        if self._trainer is None:
            return bool(self.hparams.lightning_optimizer)
        from torch.nn.parallel import DistributedDataParallel

        precision = str(self.trainer.precision)
        wrapped = isinstance(self.trainer.strategy.model, DistributedDataParallel)
        return bool(self.hparams.lightning_optimizer) or wrapped or precision not in ("32", "32-true")

    def _record_group_norms(self) -> None:
        """train/grad_norm_policy and train/grad_norm_value: each group's gradient norm before any clipping."""
        groups = getattr(self.policy, "gradient_groups", None)
        if groups is None:
            return
        self._groups = groups()
        for name, grads in zip(("policy", "value"), self._groups, strict=True):
            if grads:
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
                self._epoch_stats[f"grad_norm_{name}"].append(norm.detach())
                self._group_norm[name] = norm

    def _grad_norm(self, params: list[Tensor], max_norm: float | None) -> Tensor:
        """The global gradient norm before clipping (clipping to ``max_norm`` when set: jointly, or per group)."""
        if max_norm is not None and self.hparams.clip_per_group and getattr(self, "_groups", None):
            total = torch.zeros(())
            for name, grads in zip(("policy", "value"), self._groups, strict=True):
                if grads:
                    norm = self._group_norm[name]
                    torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0))
                    total = total + norm**2
            return total.sqrt()
        if max_norm is not None:
            return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    def _update_is_finite(self, loss: float, grad_norm: float) -> bool:
        """False (skip) or NonFiniteError (stop) when the loss or the gradient is NaN/inf."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return True
        what = "loss" if not math.isfinite(loss) else "gradient"
        where = f"update {self.updates + 1} (epoch {self.current_epoch}, env step {int(self.env_steps)})"
        if self.hparams.nonfinite == "skip":
            self.skipped_updates += 1
            return False
        raise NonFiniteError(
            f"non-finite {what} ({loss:g} loss, {grad_norm:g} gradient norm) at {where}; the "
            "update was not applied. Lower learner.lr, set learner.max_grad_norm, check the env's rewards and "
            "observations — or set learner.nonfinite=skip to skip such updates and count them")

    def _check_parameters(self, params: list[Tensor]) -> None:
        """After a rollout's updates: a non-finite parameter rolls back to the rollout's start and stops."""
        if not params or self._finite_snapshot is None:
            return
        norms = torch.stack(torch._foreach_norm([p.detach() for p in params]))
        if bool(torch.isfinite(norms).all()):
            return
        names = [n for n, p in self.policy.named_parameters() if p.requires_grad]
        bad = [names[i] for i in torch.nonzero(~torch.isfinite(norms)).flatten().tolist()]
        with torch.no_grad():
            for p, saved in zip(params, self._finite_snapshot, strict=True):
                p.copy_(saved)
        raise NonFiniteError(
            f"non-finite parameters ({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}) after the updates of "
            f"epoch {self.current_epoch} (env step {int(self.env_steps)}): the weights were rolled back to the "
            "rollout's start. Lower learner.lr or set learner.max_grad_norm")

    def minibatch_loss(self, batch: Batch) -> Tensor:
        """surrogate + c_v·value loss − c_e·entropy on one minibatch; records the diagnostics."""
        if self.hparams.compile and self._compiled_loss is None:
            # inductor compiles the forward and (through AOTAutograd) the backward into fused kernels; minibatch
            # sizes vary with the rollout's real rows, hence dynamic shapes
            self._compiled_loss = torch.compile(self.loss_and_stats, dynamic=True)
        loss, stats = (self._compiled_loss or self.loss_and_stats)(batch)
        for key, value in stats.items():
            self._epoch_stats[key].append(value)
        target_kl = self.hparams.target_kl
        if target_kl is not None and self._global_mean(stats["approx_kl"]) > target_kl:
            self._stop_epoch = True  # this update still happens (as in CleanRL); the rest of the epoch does not
        return loss

    def loss_and_stats(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The minibatch loss and its diagnostics, without side effects (what ``learner.compile`` compiles)."""
        out = self.policy.evaluate(batch.obs, batch.actions)
        mask = batch.mask
        count = mask.sum().clamp_min(1.0)
        advantages = batch.advantages
        if self.hparams.normalize_advantages:
            mean = (advantages * mask).sum() / count
            std = (((advantages - mean) ** 2 * mask).sum() / (count - 1).clamp_min(1.0)).sqrt()
            advantages = (advantages - mean) / (std + 1e-8)
        logp_ref = None
        if self.reference is not None:
            with torch.no_grad():
                logp_ref = self.reference.evaluate(batch.obs, batch.actions).logp
        kl_old_new = self.policy.kl(batch.dist_params_old, out.dist_params) \
            if self.surrogate.needs_analytic_kl else None
        surrogate = self.surrogate(SurrogateInput(
            logp=out.logp, logp_old=batch.logp_old, advantages=advantages, mask=mask,
            episode_ids=batch.episode_ids, num_episodes=batch.num_episodes, logp_ref=logp_ref,
            kl_old_new=kl_old_new))
        entropy = (out.entropy * mask).sum() / count
        loss = surrogate.loss - self.hparams.ent_coef * entropy
        stats = {"policy_loss": surrogate.loss.detach(), "entropy": entropy.detach(), **surrogate.stats}
        if self.policy.has_value:
            v_loss = value_loss(out.values, batch.targets, mask, batch.values_old, self.hparams.value_clip)
            loss = loss + self.hparams.vf_coef * v_loss
            stats["value_loss"] = v_loss.detach()
        return loss, stats

    def _global_mean(self, value: Tensor) -> float:
        """The mean of a per-rank scalar over ranks (every rank gets the same number: same decisions)."""
        if self.world_size == 1:
            return float(value)
        return float(self._sum_over_ranks(value.detach().reshape(1).float().cpu())[0]) / self.world_size

    @torch.no_grad()
    def _local_kl_sums(self) -> list[float]:
        """[Σ KL(π_old ‖ π_θ)·mask, Σ mask] over this rank's rollout rows with the updated θ ([0, 0] without)."""
        batch = self._rollout_batch
        if batch is None:
            return [0.0, 0.0]
        with torch.no_grad():
            out = self.policy.evaluate(batch.obs, batch.actions)
            kl = self.policy.kl(batch.dist_params_old, out.dist_params)
            return [float((kl * batch.mask).sum()), float(batch.mask.sum())]

    def post_update_kl(self) -> float | None:
        """E[KL(π_old ‖ π_θ)] over the rollout's real rows with the updated θ (analytic, from the policy head);
        over every rank's rows under DDP."""
        if self.updates == 0 or (self._rollout_batch is None and self.world_size == 1):
            return None
        total = self._sum_over_ranks(torch.tensor(self._local_kl_sums(), dtype=torch.float64))
        return float(total[0] / total[1]) if total[1] > 0 else None

    def on_train_epoch_end(self) -> None:
        metrics: dict[str, float] = {}
        for key, values in self._epoch_stats.items():
            metrics[f"train/{key}"] = float(torch.stack(values).float().mean())
        self._epoch_stats.clear()
        if self._lean_stats:  # the lean update's diagnostics, averaged over the epoch's updates in one go
            means = self._lean.stats(self._lean_stats).tolist()
            metrics.update({f"train/{key}": value for key, value in zip(self._lean.keys, means, strict=True)})
            self._lean_stats.clear()
        if self.world_size == 1:
            kl = self.post_update_kl()
        else:
            # one exchange per rollout: diagnostics, the post-update KL's sums and any stop signal
            everyone = all_ranks((metrics, self._local_kl_sums(), self.stop_signal))
            metrics = self._mean_over_ranks([m for m, _, _ in everyone])
            kl_sum, count = (sum(x) for x in zip(*(k for _, k, _ in everyone), strict=True))
            kl = kl_sum / count if self.updates > 0 and count > 0 else None
            # a signal may reach some ranks only: every rank stops, at this same rollout
            self.stop_signal = next((s for _, _, s in everyone if s is not None), None)
            if self.stop_signal is not None:
                self.trainer.should_stop = True
        if kl is not None:
            # the adaptive-β rule (PPO paper §4) uses d = E[KL(π_old ‖ π_θ)] after the rollout's updates;
            # train/approx_kl is the mean of per-minibatch estimates taken *before* each update
            metrics["train/kl_post_update"] = kl
            for key, value in self.surrogate.after_rollout(kl).items():
                metrics[f"train/{key}"] = value
        metrics["train/skipped_updates"] = float(self.skipped_updates)
        metrics["train/skipped_rollouts"] = float(self.skipped_rollouts)
        if self.last_rollout is not None:
            r = self.last_rollout
            if r.episode_returns.numel() > 0:
                metrics["rollout/episode_return"] = float(r.episode_returns.mean())
                metrics["rollout/episode_length"] = float(r.episode_lengths.mean())
            metrics["train/explained_variance"] = r.explained_variance
            metrics["rollout/advantage_mean"] = r.advantage_mean
            metrics["rollout/advantage_std"] = r.advantage_std
        metrics["train/lr"] = self.optimizers().param_groups[0]["lr"]
        metrics["env_steps"] = float(self.env_steps)
        elapsed = time.perf_counter() - (self._start_time or time.perf_counter())
        if elapsed > 0:
            metrics["perf/sps"] = (int(self.env_steps) - self._start_steps) / elapsed
        self.emit_metrics(metrics)  # NaN included: a NaN metric is information, not something to drop

    @staticmethod
    def _mean_over_ranks(gathered: list[dict[str, float]]) -> dict[str, float]:
        """Every rank's diagnostics averaged (each rank's mean over its own minibatches, equally weighted).

        Ranks may hold different keys (a rank whose rollout had no real row logged no train/* diagnostics; custom
        surrogates log their own), so whole dicts are exchanged; a key a rank lacks does not count as 0."""
        keys = sorted({k for m in gathered for k in m})
        out = {}
        for key in keys:
            values = [m[key] for m in gathered if key in m and math.isfinite(m[key])]
            out[key] = sum(values) / len(values) if values else math.nan
        return out

    _PROGRESS_BAR_KEYS = ("rollout/episode_return", "env_steps", "perf/sps")

    def emit_metrics(self, metrics: dict[str, float]) -> None:
        """Send one epoch's metrics straight to the loggers, the callbacks and the progress bar.

        ``self.log`` costs ~1.3 ms per key here (result collection, tensor conversion); with ~20 keys per epoch
        that was 14% of a CartPole run. These are plain per-epoch floats: nothing to reduce or sync.
        """
        for logger in self.loggers:
            logger.log_metrics(metrics, step=int(self.env_steps))  # env steps are the x-axis everywhere
        tensors = {k: torch.tensor(v) for k, v in metrics.items()}
        self.trainer.callback_metrics.update(tensors)
        self.trainer.progress_bar_metrics.update({k: v for k, v in metrics.items() if k in self._PROGRESS_BAR_KEYS})
