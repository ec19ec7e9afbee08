"""Activation kernels for the fast paths (pure torch).

``tanh_`` is the fast paths' in-place tanh. On the CPU, torch's own ``tanh`` is several times dearer per float32
element than ``sigmoid`` (its vectorised kernel keeps tanh's full accuracy; measured with
``benchmarks/update_cost.py``, see docs/performance.md): on the fast paths' largest activations (a minibatch through
both trunks, or every member of a population) tanh is the single most expensive operator. So above
``SIGMOID_FORM_MIN_ELEMENTS`` elements on the CPU it is computed as the identity

    tanh(x) = 2 σ(2x) − 1

in four in-place element-wise calls, still cheaper per element than ``tanh``; below it (one act call of a few
envs) the four calls' dispatch costs more than they save, and torch's ``tanh_`` runs. The two agree to ≈ 2e-7
absolute in float32 (a few ulps of 0.5, the size of the differences a reordered matmul makes) and ≈ 4e-16 in
float64; ±inf give ±1 and NaN stays NaN, as with tanh. ``tests/accel/test_activations.py`` checks both against
``torch.tanh``, and the start-up checks (``accel/verify.py``, ``verify_stacked``) run with this kernel on every
tensor (``large_tensor_kernels``), so the branch training takes is the one compared with the reference network.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import Tensor

SIGMOID_FORM_MIN_ELEMENTS = 4096  # above the measured break-even (benchmarks/update_cost.py; see docs/performance.md)


def tanh_(x: Tensor) -> Tensor:
    """``x.tanh_()``, by ``2 σ(2x) − 1`` where that is cheaper (a large tensor on the CPU). Returns ``x``."""
    if x.device.type != "cpu" or x.numel() < SIGMOID_FORM_MIN_ELEMENTS:
        return x.tanh_()
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


def tanh(x: Tensor) -> Tensor:
    """Out-of-place ``tanh`` with ``tanh_``'s kernel choice."""
    return tanh_(x.clone()) if x.device.type == "cpu" and x.numel() >= SIGMOID_FORM_MIN_ELEMENTS else torch.tanh(x)


def large_tensor_kernels(check):
    """Run ``check`` (a start-up verifier) with the large-tensor kernels on every tensor: its synthetic batch is
    small, and the branch it must compare with the reference is the one training takes on real minibatches."""

    @functools.wraps(check)
    def wrapped(*args, **kwargs):
        with _threshold(0):
            return check(*args, **kwargs)

    return wrapped


@contextlib.contextmanager
def _threshold(elements: int):
    global SIGMOID_FORM_MIN_ELEMENTS
    saved, SIGMOID_FORM_MIN_ELEMENTS = SIGMOID_FORM_MIN_ELEMENTS, elements
    try:
        yield
    finally:
        SIGMOID_FORM_MIN_ELEMENTS = saved
