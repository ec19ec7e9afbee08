"""Action distributions with their linear output layer: categorical (Discrete) and diagonal Gaussian (1-D Box).

The distribution math is written out (log-softmax, closed-form Gaussian log-density) rather than going through
``torch.distributions``: argument validation there costs more than a whole small-MLP forward at small batch, and
collection calls ``sample`` / ``log_prob`` once per environment step. Pure torch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["CategoricalHead", "GaussianHead", "make_head", "orthogonal_"]


def orthogonal_(layer: nn.Linear, gain: float) -> nn.Linear:
    """Orthogonal weights with ``gain``, zero bias (CleanRL / SB3's initialisation); returns the layer."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class CategoricalHead(nn.Module):
    """Logits over n actions. Distribution parameters = log-probabilities [B, n]."""

    def __init__(self, in_dim: int, n: int) -> None:
        super().__init__()
        self.linear = orthogonal_(nn.Linear(in_dim, n), 0.01)  # near-uniform initial policy
        self.param_dim = n

    def params(self, features: Tensor) -> Tensor:
        """features [B, in] → log-probabilities [B, n]."""
        return self.params_from_output(self.linear(features))

    def params_from_output(self, logits: Tensor) -> Tensor:
        """logits [B, n] → log-probabilities [B, n]."""
        return torch.log_softmax(logits, dim=-1)

    def sample(self, params: Tensor) -> Tensor:
        # Gumbel-max: argmax(log p − log E), E ~ Exp(1), is an exact sample of p and 3× cheaper than multinomial
        return (params - torch.empty_like(params).exponential_().log()).argmax(-1)

    def mode(self, params: Tensor) -> Tensor:
        return params.argmax(-1)

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        return params.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self, params: Tensor) -> Tensor:
        return -(params.exp() * params).sum(-1)

    def kl(self, params_p: Tensor, params_q: Tensor) -> Tensor:
        """KL(p ‖ q) per row. [B]"""
        return (params_p.exp() * (params_p - params_q)).sum(-1)


class GaussianHead(nn.Module):
    """Diagonal Gaussian with a state-independent log-std. Parameters = [mean, log_std] concatenated [B, 2d]."""

    def __init__(self, in_dim: int, dim: int, log_std_init: float = 0.0) -> None:
        super().__init__()
        self.linear = orthogonal_(nn.Linear(in_dim, dim), 0.01)
        self.log_std = nn.Parameter(torch.full((dim,), float(log_std_init)))
        self.dim = dim
        self.param_dim = 2 * dim

    def params(self, features: Tensor) -> Tensor:
        """features [B, in] → [mean, log_std] [B, 2d]."""
        return self.params_from_output(self.linear(features))

    def params_from_output(self, mean: Tensor) -> Tensor:
        """means [B, d] → [mean, log_std] [B, 2d]."""
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        return params[..., : self.dim], params[..., self.dim:]

    def sample(self, params: Tensor) -> Tensor:
        mean, log_std = self._split(params)
        return mean + log_std.exp() * torch.randn_like(mean)

    def mode(self, params: Tensor) -> Tensor:
        return self._split(params)[0]

    def log_prob(self, params: Tensor, actions: Tensor) -> Tensor:
        mean, log_std = self._split(params)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self, params: Tensor) -> Tensor:
        _, log_std = self._split(params)
        return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)

    def kl(self, params_p: Tensor, params_q: Tensor) -> Tensor:
        mean_p, log_std_p = self._split(params_p)
        mean_q, log_std_q = self._split(params_q)
        var_p, var_q = (2 * log_std_p).exp(), (2 * log_std_q).exp()
        return (log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5).sum(-1)


def make_head(kind: str, size: int, in_dim: int, log_std_init: float = 0.0) -> CategoricalHead | GaussianHead:
    """The distribution head for ``action_space_spec``'s (kind, size): categorical over n, or a d-dim Gaussian."""
    if kind == "discrete":
        return CategoricalHead(in_dim, size)
    if kind == "continuous":
        return GaussianHead(in_dim, size, log_std_init)
    raise ValueError(f"action_space kind must be 'discrete' or 'continuous', got {kind!r}")
