"""The fast paths' tanh kernel against torch.tanh (the reference network's nn.Tanh)."""

import pytest
import torch

from pglab.accel import activations, fused_actor
from pglab.accel.activations import SIGMOID_FORM_MIN_ELEMENTS, tanh, tanh_

# both kernels: below the size threshold torch's tanh_ runs, above it the 2σ(2x) − 1 form
SIZES = [SIGMOID_FORM_MIN_ELEMENTS - 1, 8 * SIGMOID_FORM_MIN_ELEMENTS]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2.5e-7), (torch.float64, 1e-15)])
def test_tanh_matches_torch_over_the_whole_range(n, dtype, atol):
    # from deep saturation through the steep middle, plus the values around 0 where 2σ(2x) − 1 loses relative accuracy
    x = torch.cat([torch.linspace(-30, 30, n // 2, dtype=dtype), torch.linspace(-1e-4, 1e-4, n - n // 2, dtype=dtype)])
    expected = torch.tanh(x)
    out = x.clone()
    assert tanh_(out) is out  # in place, returned like Tensor.tanh_
    assert (out - expected).abs().max() <= atol
    assert (tanh(x) - expected).abs().max() <= atol
    assert out.abs().max() <= 1


def test_tanh_keeps_infinities_and_nan():
    x = torch.zeros(2 * SIGMOID_FORM_MIN_ELEMENTS)
    x[:3] = torch.tensor([float("inf"), -float("inf"), float("nan")])
    out = tanh_(x.clone())
    assert out[0] == 1 and out[1] == -1 and torch.isnan(out[2]) and not torch.isnan(out[3:]).any()


def test_the_start_up_check_compares_the_large_tensor_kernel(monkeypatch):
    """The verifier's synthetic batch is small; it must still run the branch training takes on large minibatches:
    a kernel wrong only above the size threshold is caught by both checks."""
    from pglab.accel import lean
    from pglab.accel.verify import verify_fused_actor, verify_lean_update
    from pglab.core.surrogates import Clip
    from pglab.learner.loss import LossSettings
    from pglab.models.mlp import ActorCritic

    def wrong_above_threshold(x):
        if x.numel() < activations.SIGMOID_FORM_MIN_ELEMENTS:
            return x.tanh_()
        return x.mul_(2).sigmoid_().mul_(2).sub_(0.99)  # off by 0.01

    torch.manual_seed(0)
    policy = ActorCritic(4, ("discrete", 2))
    assert verify_lean_update(policy, Clip(0.2), LossSettings()).problem is None
    assert verify_fused_actor(policy).problem is None
    monkeypatch.setitem(lean._ACTIVATION_FORWARD, "tanh", wrong_above_threshold)
    assert verify_lean_update(policy, Clip(0.2), LossSettings()).problem is not None
    monkeypatch.setattr(activations, "tanh", lambda x: wrong_above_threshold(x.clone()))
    monkeypatch.setitem(fused_actor._ACTIVATION_FNS, "tanh", lambda x: wrong_above_threshold(x.clone()))
    assert verify_fused_actor(policy).problem is not None
    assert activations.SIGMOID_FORM_MIN_ELEMENTS == SIGMOID_FORM_MIN_ELEMENTS  # restored after each check
