"""A small causal transformer policy over a token env's history (``model=transformer``).

It reads the observation layout of ``pglab.envs.tokens`` — ``[tokens (S) | cursor]``, token ids in
``[0, vocab)`` — embeds tokens and positions, runs ``num_layers`` pre-LayerNorm blocks of causal self-attention
and an MLP, and reads the policy (and, optionally, the value) from the hidden state at the cursor: the last
filled position, the one whose output chooses the next token.

Same interface as ``pglab.models.mlp.ActorCritic`` (``act``, ``evaluate``, ``value``, ``kl``,
``head.param_dim``, ``has_value``), so every estimator, baseline and surrogate runs on it unchanged.
Generation recomputes the whole (short) history every step: cost ∝ length per token, no KV cache.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pglab.core.distributions import CategoricalHead
from pglab.core.types import ActOutput, EvalOutput

__all__ = ["TransformerPolicy", "token_layout"]


def token_layout(observation_space) -> tuple[int, int]:
    """(vocab_size, seq_len S) of a token-env observation Box ``[S + 1]``; ValueError (with the fix) otherwise."""
    hint = ("model=transformer reads token-env observations ([tokens (S) | cursor] as made by pglab.envs.tokens, "
            "e.g. env=reverse); use model=mlp for this env")
    shape = getattr(observation_space, "shape", None)
    low, high = getattr(observation_space, "low", None), getattr(observation_space, "high", None)
    if shape is None or low is None or high is None or len(shape) != 1 or shape[0] < 3:
        raise ValueError(f"observation space {observation_space} is not a 1-D Box: {hint}")
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    seq_len = shape[0] - 1
    tokens_high = high[:seq_len]
    if not (np.all(low == 0) and np.all(np.isfinite(high)) and np.all(tokens_high == tokens_high[0])
            and tokens_high[0] == np.round(tokens_high[0]) and tokens_high[0] >= 1 and high[-1] == seq_len - 1):
        raise ValueError(f"observation space {observation_space} does not have a token env's bounds (low 0, the "
                         f"same integer high on every token slot, high S-1 on the cursor slot): {hint}")
    return int(tokens_high[0]) + 1, seq_len


class _Block(nn.Module):
    """Pre-LayerNorm causal self-attention + MLP."""

    def __init__(self, d_model: int, num_heads: int, ff_mult: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, ff_mult * d_model), nn.GELU(), nn.Linear(ff_mult * d_model,
                                                                                               d_model))

    def forward(self, x: Tensor) -> Tensor:
        """x [B, L, d] → [B, L, d]; position i attends to positions ≤ i only."""
        B, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(B, L, d))
        return x + self.mlp(self.ln2(x))


class TransformerPolicy(nn.Module):
    """Causal transformer π(token | history) with an optional value head V(history).

    Args:
        vocab_size: token ids in the observation are in [0, vocab_size).
        seq_len: S, the history length (the observation is [S + 1]: tokens, then the cursor).
        num_actions: size of the Discrete action space (actions are token ids < num_actions).
        d_model, num_layers, num_heads, ff_mult: width, depth, attention heads, MLP expansion.
        value_head: a linear V(s) on the cursor's hidden state (shared trunk; PPO). None for GRPO/GSPO.
    """

    def __init__(self, vocab_size: int, seq_len: int, num_actions: int, d_model: int = 64, num_layers: int = 2,
                 num_heads: int = 4, ff_mult: int = 4, value_head: bool = False) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}: set model.num_heads to a "
                             f"divisor of {d_model}")
        if num_layers < 1 or d_model < 1 or ff_mult < 1:
            raise ValueError(f"num_layers, d_model and ff_mult must be >= 1, got {num_layers}, {d_model}, {ff_mult}")
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, num_heads, ff_mult) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2: residual projections scaled by depth
            for layer in (block.proj, block.mlp[2]):
                nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * num_layers))
        self.head = CategoricalHead(d_model, num_actions)  # its own init: near-uniform initial policy
        self.has_value = value_head
        self.value_out = nn.Linear(d_model, 1) if value_head else None
        if self.value_out is not None:
            nn.init.orthogonal_(self.value_out.weight, 1.0)
            nn.init.zeros_(self.value_out.bias)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    @classmethod
    def from_config(cls, observation_space, action_space, d_model: int = 64, num_layers: int = 2,
                    num_heads: int = 4, ff_mult: int = 4, value_head: bool = False) -> TransformerPolicy:
        """The network ``conf/model/transformer.yaml`` describes, sized from a token env's spaces."""
        vocab_size, seq_len = token_layout(observation_space)
        n = getattr(action_space, "n", None)
        if n is None:
            raise ValueError(f"model=transformer emits tokens and needs a Discrete action space, got {action_space}")
        if int(n) > vocab_size:
            raise ValueError(f"the action space has {int(n)} tokens but the observation's vocabulary only "
                             f"{vocab_size}: this is not a token env (use model=mlp)")
        return cls(vocab_size, seq_len, int(n), d_model=d_model, num_layers=num_layers, num_heads=num_heads,
                   ff_mult=ff_mult, value_head=value_head)

    # -- the trunk -------------------------------------------------------------------------------------
    def hidden(self, tokens: Tensor) -> Tensor:
        """Hidden states [B, L, d] of a token batch [B, L] (L ≤ S); position i depends on tokens ≤ i only."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def logits(self, tokens: Tensor) -> Tensor:
        """Next-token logits at every position [B, L, num_actions] (a language model's view)."""
        return self.head.linear(self.hidden(tokens))

    def _features(self, obs: Tensor) -> Tensor:
        """The cursor's hidden state [B, d] for observations [B, S + 1]."""
        cursor = obs[:, -1].long()
        # positions after the furthest cursor cannot influence any cursor (causal): leave them out
        length = int(cursor.max()) + 1 if cursor.numel() else 1
        tokens = obs[:, :length].long()
        h = self.hidden(tokens)
        return h[torch.arange(obs.shape[0], device=obs.device), cursor]

    def _values(self, features: Tensor) -> Tensor:
        if self.value_out is None:
            return features.new_zeros(features.shape[0])
        return self.value_out(features).squeeze(-1)

    # -- the ActorCritic interface ----------------------------------------------------------------------
    def value(self, obs: Tensor) -> Tensor:
        """V(s) [B]; zeros when there is no value head."""
        if self.value_out is None:
            return obs.new_zeros(obs.shape[0])
        return self._values(self._features(obs))

    def act(self, obs: Tensor, deterministic: bool = False) -> ActOutput:
        """Sample (or take the mode of) the next token for observations [N, S + 1]."""
        features = self._features(obs)
        params = self.head.params(features)
        actions = self.head.mode(params) if deterministic else self.head.sample(params)
        return ActOutput(actions, self.head.log_prob(params, actions), self._values(features), params)

    def evaluate(self, obs: Tensor, actions: Tensor) -> EvalOutput:
        """log π(a|s), entropy, V(s) and log-probabilities [B, num_actions] for stored (obs, action) rows [B]."""
        features = self._features(obs)
        params = self.head.params(features)
        return EvalOutput(self.head.log_prob(params, actions), self.head.entropy(params), self._values(features),
                          params)

    def kl(self, params_old: Tensor, params_new: Tensor) -> Tensor:
        """Analytic KL(π_old ‖ π_new) per row. [B]"""
        return self.head.kl(params_old, params_new)
