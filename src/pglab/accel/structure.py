"""The structural gate of every fast path: is this network exactly the MLP actor-critic the fast paths implement?

The fused collection actor and the lean update compute ``ActorCritic``'s forward (and the lean update its
backward) from the network's own parameters, for one shape of network only: ``pglab.models.mlp.ActorCritic``
itself (not a subclass), trunks that are ``nn.Sequential([Linear, Tanh|ReLU] * n)``, a categorical or Gaussian
head holding one ``Linear``, a ``Linear`` value head, no other module, parameter or buffer, and no hooks. Anything
else — a LayerNorm in the trunk, an extra module, a subclass — gets a reason (a string naming what differs) and
runs the reference code. What this cannot see (an edited ``forward`` or distribution method) the numerical check
at start-up (``pglab.accel.verify``) catches. Pure torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.modules import module as module_globals

from pglab.core.distributions import CategoricalHead, GaussianHead
from pglab.models.mlp import ActorCritic

__all__ = ["MLPLayout", "mlp_layout", "ACTIVATION_MODULES"]

# the activations the fast paths derive (forward and derivative from the output), by exact module type
ACTIVATION_MODULES = {nn.Tanh: "tanh", nn.ReLU: "relu"}


@dataclass
class MLPLayout:
    """The parameters of an ``ActorCritic`` as the fast paths read them (nn.Linear layout: weight [out, in]).

    ``value_linears`` is None when V(s) reads the policy trunk's features (shared trunk, or no value head)."""

    policy_linears: list[nn.Linear]
    value_linears: list[nn.Linear] | None
    head: CategoricalHead | GaussianHead
    value_out: nn.Linear | None
    activation: str | None  # None: no hidden layer
    discrete: bool

    @property
    def log_std(self) -> Tensor | None:
        return getattr(self.head, "log_std", None)


def _trunk(trunk: nn.Module, name: str) -> tuple[list[nn.Linear], str | None] | str:
    """(its Linear layers, its activation) for a ``Sequential([Linear, act] * n)``, else the reason it is not."""
    if type(trunk) is not nn.Sequential:
        return f"{name} is a {type(trunk).__name__}, not an nn.Sequential"
    children = list(trunk.named_children())
    if len(children) % 2:
        return f"{name} has {len(children)} modules, not [Linear, activation] pairs"
    linears, kinds = [], set()
    for i in range(0, len(children), 2):
        (lin_name, linear), (act_name, act) = children[i], children[i + 1]
        if type(linear) is not nn.Linear:
            return f"{name}.{lin_name} is a {type(linear).__name__} (the fast paths implement [Linear, Tanh|ReLU]*n)"
        if type(act) not in ACTIVATION_MODULES:
            return (f"{name}.{act_name} is a {type(act).__name__} (the fast paths implement [Linear, Tanh|ReLU]*n; "
                    "elu and gelu run the reference network)")
        if getattr(act, "inplace", False):
            return f"{name}.{act_name} is in-place"
        linears.append(linear)
        kinds.add(ACTIVATION_MODULES[type(act)])
    return linears, (kinds.pop() if len(kinds) == 1 else None) if kinds else None


def _has_hooks(policy: nn.Module) -> str | None:
    hook_tables = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                   "_state_dict_hooks", "_load_state_dict_pre_hooks")
    for name, module in policy.named_modules():
        for table in hook_tables[:4]:
            if getattr(module, table, None):
                return f"a {table.strip('_').replace('_', ' ')} on {name or 'the network'}"
    for table in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                  "_global_backward_pre_hooks"):
        if getattr(module_globals, table, None):
            return f"a global module {table[8:].replace('_', ' ')}"
    return None


def mlp_layout(policy: nn.Module) -> MLPLayout | str:
    """The layout of ``policy`` when it is exactly the network the fast paths implement, else the reason (str)."""
    if type(policy) is not ActorCritic:
        return (f"the policy is a {type(policy).__name__}, not pglab's plain MLP ActorCritic" if
                not isinstance(policy, ActorCritic) else
                f"the policy is {type(policy).__name__}, a subclass of ActorCritic (it may change anything)")
    expected = {"policy_trunk", "head"} | ({"value_out"} if policy.value_out is not None else set()) \
        | ({"value_trunk"} if policy.value_trunk is not None else set())
    names = {name for name, _ in policy.named_children()}
    if names != expected:
        extra = sorted(names - expected)
        return f"the network has module(s) {extra} beyond the trunks and heads" if extra else \
            f"the network lacks {sorted(expected - names)}"
    policy_trunk = _trunk(policy.policy_trunk, "policy_trunk")
    if isinstance(policy_trunk, str):
        return policy_trunk
    value_trunk = None
    if policy.value_trunk is not None:
        value_trunk = _trunk(policy.value_trunk, "value_trunk")
        if isinstance(value_trunk, str):
            return value_trunk
        if [tuple(l.weight.shape) for l in value_trunk[0]] != [tuple(l.weight.shape) for l in policy_trunk[0]]:
            return "the value trunk's layer sizes differ from the policy trunk's"
    activations = {a for a in (policy_trunk[1], value_trunk[1] if value_trunk else None) if a is not None}
    if len(activations) > 1 or (policy_trunk[0] and policy_trunk[1] is None):
        return "the trunks mix activations"
    head = policy.head
    if type(head) not in (CategoricalHead, GaussianHead):
        return f"the policy head is a {type(head).__name__}, not pglab's CategoricalHead or GaussianHead"
    if {n for n, _ in head.named_children()} != {"linear"} or type(head.linear) is not nn.Linear:
        return "the policy head holds modules beyond its one nn.Linear"
    if policy.value_out is not None and (type(policy.value_out) is not nn.Linear or policy.value_out.out_features != 1):
        return "value_out is not an nn.Linear with one output"
    if any(True for _ in policy.buffers()):
        return "the network has buffers (e.g. a normalisation layer's statistics)"
    value_linears = value_trunk[0] if value_trunk else None
    layout = MLPLayout(policy_trunk[0], value_linears or None, head, policy.value_out,
                       activations.pop() if activations else None, type(head) is CategoricalHead)
    known = {id(p) for layer in [*layout.policy_linears, *(layout.value_linears or []), head.linear,
                                 *([policy.value_out] if policy.value_out is not None else [])]
             for p in (layer.weight, layer.bias) if p is not None}
    if layout.log_std is not None:
        known.add(id(layout.log_std))
    extra = [name for name, p in policy.named_parameters() if id(p) not in known]
    if extra:
        return f"the network has parameter(s) {extra[:3]} beyond the trunks' and heads' layers"
    if any(layer.bias is None for layer in [*layout.policy_linears, *(layout.value_linears or []), head.linear]):
        return "a Linear layer without a bias"
    if not all(p.requires_grad for p in policy.parameters()):
        return "some parameters are frozen (requires_grad=False)"
    hooks = _has_hooks(policy)
    if hooks is not None:
        return hooks
    return layout
