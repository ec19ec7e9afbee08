"""The LightningModule: networks, surrogate, optimiser and every piece of learnable or adaptive state.

Each update minimises surrogate + c_v·value loss − c_e·entropy on one minibatch; one Lightning training step
runs a whole rollout's updates (manual optimisation). Adaptive β (a buffer of the surrogate), the frozen
reference policy (GRPO's KL) and the env-step counter live here, so a checkpoint of this module is a checkpoint
of the learner.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from torch import Tensor

from pglab.accel.fused_actor import fused_actor
from pglab.accel.lean import GRADIENT_MODES, unsupported
from pglab.accel.lean import LeanUpdate as LeanGradient
from pglab.accel.structure import mlp_layout
from pglab.accel.verify import float64_copy, verify_fused_actor, verify_lean_update
from pglab.core.collectives import all_ranks
from pglab.core.surrogates import Surrogate
from pglab.core.types import ActOutput, Batch, RolloutStats
from pglab.learner.loss import LossSettings, minibatch_loss
from pglab.learner.update import AutogradUpdate, Diagnostics, LeanUpdate, LightningUpdate, Update
from pglab.models.build import InferenceActor

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
        gradients: how a minibatch's gradient is computed. ``autograd``: autograd through the reference loss
            (``pglab.learner.loss``; every component). ``lean``: hand-derived gradients without autograd
            (``pglab.accel.lean``: for the plain MLP ActorCritic and a surrogate that declares ``lean_formula``),
            refused when it does not apply or disagrees with the reference at the start-up check; ``auto``: lean
            where it applies and agrees, else autograd, with one line at start-up saying which runs and why.

    Collection likewise uses the fused actor (``pglab.accel.fused_actor``) only when the network is exactly the
    plain MLP and the fused actor agrees with it at start-up; otherwise the network itself acts.
    """

    def __init__(self, policy: torch.nn.Module, surrogate: Surrogate, lr: float = 2.5e-4, adam_eps: float = 1e-5,
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
        self._epoch_vectors: dict[tuple[str, ...], list[Tensor]] = defaultdict(list)  # Diagnostics [K] by names
        self.last_rollout: RolloutStats | None = None
        self._rollout_batch: Batch | None = None  # the flat rollout, for the post-update KL
        self._stop_epoch = False
        self.stop_signal: int | None = None  # set by a signal handler: stop at the next update boundary
        self.skipped_updates = 0  # non-finite updates skipped (learner.nonfinite=skip)
        self._group_norm: dict[str, Tensor] = {}
        self._compiled_loss = None  # learner.compile: torch.compile(loss_and_stats), built at the first update
        self.loss_settings = LossSettings(vf_coef=vf_coef, ent_coef=ent_coef, value_clip=value_clip,
                                          normalize_advantages=normalize_advantages)
        self.update: Update | None = None  # chosen at fit start (see on_fit_start)
        self.update_path = "autograd"
        self._layout = None  # the network's layout for the fused collection actor, when it applies and agrees
        self.collection_path = "network"
        self.fast_path_notice = ""  # the start-up line saying which paths run and why
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
    def actor(self):
        """The acting policy for one rollout or evaluation: a fused snapshot of the current weights when the start-up
        check chose it (``pglab.accel.fused_actor``), else the network itself under no_grad."""
        return fused_actor(self._layout) if self._layout is not None else InferenceActor(self.policy)

    def rollout_policy(self) -> tuple[Callable[[Tensor], ActOutput], Callable[[Tensor], Tensor]]:
        """(act, value) for one rollout (see ``actor``)."""
        actor = self.actor()
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
        if self.world_size > 1:  # one exchange per rollout; every field by name (a new one survives DDP)
            mine = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
            everyone = all_ranks(mine | {"episode_returns": stats.episode_returns.tolist(),
                                         "episode_lengths": stats.episode_lengths.tolist()})
            stats = dataclasses.replace(
                stats, env_steps=sum(e["env_steps"] for e in everyone),
                episode_returns=torch.tensor([r for e in everyone for r in e["episode_returns"]], dtype=torch.float32),
                episode_lengths=torch.tensor([n for e in everyone for n in e["episode_lengths"]], dtype=torch.float32),
                metrics=self._mean_over_ranks([e["metrics"] for e in everyone]))
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
        # the fused kernel is several times faster than the default for these small networks (CPU and CUDA alike)
        return torch.optim.Adam(self.policy.parameters(), lr=self.hparams.lr, eps=self.hparams.adam_eps, fused=True)

    @staticmethod
    def _lr_fraction(steps: int, t0: int, f0: float, total: int) -> float:
        """Linear decay from fraction f0 at env step t0 to 0 at ``total``."""
        if total <= t0:
            return 0.0
        return max(0.0, f0 * (total - steps) / (total - t0))

    def on_fit_start(self) -> None:
        """Choose the collection actor and the update once, before the first env step, and say which and why."""
        self._choose_paths()
        if self._trainer is None or self.trainer.is_global_zero:
            print(self.fast_path_notice, flush=True)

    def _choose_paths(self) -> None:
        """The fused actor and the lean update run only where the network's structure is what they implement *and*
        the start-up check (``pglab.accel.verify``) finds them equal to the reference; else the reference runs."""
        layout = mlp_layout(self.policy)
        self._layout = None
        started = time.perf_counter()  # what the start-up checks cost, the float64 copy included
        # one float64 copy serves both checks (the fused actor's only reads it)
        reference = float64_copy(self.policy) if not isinstance(layout, str) else None
        if isinstance(layout, str):
            collection = f"the network acts (fused actor: {layout})"
        else:
            verdict = verify_fused_actor(self.policy, reference=reference)
            if verdict.problem is None:
                self._layout = layout
                collection = "fused actor"
            else:
                collection = f"the network acts ({verdict.problem})"
        self.collection_path = "fused" if self._layout is not None else "network"

        mode = self.hparams["gradients"]
        reason = self._lean_unsupported
        if reason is None and self._through_lightning:
            reason = "updates through Lightning's optimizer wrappers (mixed precision, Lightning's DDP wrapper or " \
                     "learner.lightning_optimizer=true)"
        if reason is None and mode != "autograd":
            reason = verify_lean_update(self.policy, self.surrogate, self.loss_settings, reference=reference).problem
        checked_ms = 1000 * (time.perf_counter() - started)
        if mode == "lean" and reason is not None:
            raise ValueError(f"learner.gradients=lean does not cover this run: {reason}. Set learner.gradients=auto "
                             "(or autograd) to use the autograd update")
        if mode != "autograd" and reason is None:
            gradient = LeanGradient(self.policy, self.surrogate, vf_coef=self.hparams.vf_coef,
                                    ent_coef=self.hparams.ent_coef, value_clip=self.hparams.value_clip,
                                    normalize_advantages=self.hparams.normalize_advantages)
            self.update = LeanUpdate(self, gradient)
            update = f"lean (verified against autograd; start-up checks {checked_ms:.0f} ms)"
        else:
            self.update = LightningUpdate(self) if self._through_lightning else AutogradUpdate(self)
            update = "autograd" + ("" if mode == "autograd" else f" (the lean update steps aside: {reason})")
        self.update_path = "lean" if isinstance(self.update, LeanUpdate) else "autograd"
        self.fast_path_notice = f"pglab: collection: {collection}; update: {update}"

    @property
    def trainable_parameters(self) -> list[Tensor]:
        return [p for p in self.policy.parameters() if p.requires_grad]

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

        Manual optimisation: Lightning's per-step machinery costs about as much as a whole update on CartPole-sized
        minibatches, so by default one Lightning step holds a whole rollout's K·M updates. Each update is one call
        of the update chosen at fit start (``pglab.learner.update``).
        """
        if self.update is None:  # a module used without Trainer.fit's hooks (tests, tools)
            self._choose_paths()
        update, params = self.update, self.trainable_parameters
        world = self.world_size
        target_kl = self.hparams.target_kl
        update.start(minibatches)
        for i, batch in enumerate(minibatches):
            if self._stop_epoch or (self.stop_signal is not None and world == 1):
                # target-KL early stop (decided on the global KL, so every rank stops together), or SIGTERM/SIGINT
                # on one process; under DDP a signal is acted on at the rollout's end, agreed by every rank
                break
            if self._finite_snapshot is None:
                self._finite_snapshot = [p.detach().clone() for p in params]
            # the per-group gradient norms are a diagnostic: taken on a rollout's first update, on every update only
            # when clip_per_group needs them
            stats = update(batch, first=i == 0 and batch_idx == 0)
            if isinstance(stats, Diagnostics):  # one vector per update, stacked once at the epoch's end
                self._epoch_vectors[stats.names].append(stats.vector)
            else:
                for key, value in stats.items():
                    self._epoch_stats[key].append(value)
            if target_kl is not None and self._global_mean(stats["approx_kl"]) > target_kl:
                self._stop_epoch = True  # this update happened (as in CleanRL); the rest of the epoch does not
        self._check_parameters(params)

    def _count_direct_step(self) -> None:
        """An update that bypassed Lightning's optimizer wrapper: keep trainer.global_step counting updates
        (checkpointing and max_steps rely on it) and count it."""
        step_progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        step_progress.increment_ready()
        step_progress.increment_completed()
        self.updates += 1

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

    def loss_and_stats(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """The reference minibatch loss and its diagnostics, without side effects (what ``learner.compile``
        compiles; see ``pglab.learner.loss``)."""
        return minibatch_loss(self.policy, self.surrogate, batch, self.loss_settings, self.reference)

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
        if self._epoch_stats or self._epoch_vectors:
            # every diagnostic's mean over the epoch's updates, in one host transfer
            keys = [k for names in self._epoch_vectors for k in names] + list(self._epoch_stats)
            parts = [torch.stack(vectors).float().mean(0) for vectors in self._epoch_vectors.values()]
            parts += [torch.stack(self._epoch_stats[k]).float().mean().view(1) for k in self._epoch_stats]
            means = torch.cat(parts).tolist()
            metrics.update({f"train/{key}": value for key, value in zip(keys, means, strict=True)})
        self._epoch_stats.clear()
        self._epoch_vectors.clear()
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
            metrics.update(r.metrics)
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

        ``self.log`` does per-key work (result collection, tensor conversion) that, with ~20 keys per epoch, is a
        sizeable share of a small run (CartPole). These are plain per-epoch floats: nothing to reduce or sync.
        """
        for logger in self.loggers:
            logger.log_metrics(metrics, step=int(self.env_steps))  # env steps are the x-axis everywhere
        tensors = {k: torch.tensor(v) for k, v in metrics.items()}
        self.trainer.callback_metrics.update(tensors)
        self.trainer.progress_bar_metrics.update({k: v for k, v in metrics.items() if k in self._PROGRESS_BAR_KEYS})
