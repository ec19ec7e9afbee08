"""The fast paths' tanh kernel against torch.tanh (the reference network's nn.Tanh)."""

import pytest
import torch

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
