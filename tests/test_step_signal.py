"""The policy's per-step features (``StepSignal``): hand-computed values, the smoothing, the clips, the bounds."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2lzo.policy.features import STEP_FEATURES, StepSignal


def close(features: torch.Tensor, want: list[float]) -> None:
    assert features.dtype == torch.float32 and features.shape == (len(STEP_FEATURES),)
    torch.testing.assert_close(features, torch.tensor(want, dtype=torch.float32), rtol=1e-6, atol=1e-6)


def test_before_any_loss_only_progress_is_known():
    signal = StepSignal(total_steps=10)
    close(signal.features(0), [0.0, 0.0, 0.0])
    close(signal.features(5), [0.5, 0.0, 0.0])
    close(signal.features(25), [1.0, 0.0, 0.0])  # past the planned end: progress stays at 1


def test_first_update_is_taken_whole_then_smoothed():
    signal = StepSignal(total_steps=10, smoothing=0.9)
    # L = (1.2 + 0.8) / 2 = 1, so log L = 0; |L+ - L-| / (2 eps L) = 0.4 / 0.02 = 20.
    signal.update(1.2, 0.8, eps=0.01)
    first_signal = math.log10(20 + 1e-6)
    close(signal.features(3), [0.3, math.tanh(0.0), first_signal / 4])
    # L+ = L- = e: log L = 1, no difference so the signal is log10(1e-6) = -6; each enters with weight 0.1.
    signal.update(math.e, math.e, eps=0.01)
    log_loss, log_signal = 0.9 * 0.0 + 0.1 * 1.0, 0.9 * first_signal + 0.1 * -6.0
    close(signal.features(4), [0.4, math.tanh(log_loss), log_signal / 4])


def test_smoothing_weighs_history_by_its_factor():
    slow, fast = StepSignal(10, smoothing=0.9), StepSignal(10, smoothing=0.5)
    for s in (slow, fast):
        s.update(1.0, 1.0, eps=0.1)  # log L = 0
        s.update(math.e**2, math.e**2, eps=0.1)  # log L = 2
    assert math.tanh(0.2) == pytest.approx(float(slow.features(1)[1]), rel=1e-6)
    assert math.tanh(1.0) == pytest.approx(float(fast.features(1)[1]), rel=1e-6)


def test_the_signal_is_clipped_and_a_zero_loss_is_floored():
    big = StepSignal(10)
    big.update(2.0, 0.0, eps=1e-9)  # |dL| / (2 eps L) = 1e9: log10 = 9, / 4 = 2.25, clipped to 1.5
    close(big.features(0), [0.0, math.tanh(0.0), 1.5])
    zero = StepSignal(10)
    zero.update(0.0, 0.0, eps=1e-3)  # L floored at 1e-6 (log L = -13.8); no difference: log10(1e-6) / 4 = -1.5
    close(zero.features(0), [0.0, math.tanh(math.log(1e-6)), -1.5])
    assert math.isfinite(float(zero.features(0)[1]))


def test_total_steps_must_be_positive():
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        StepSignal(total_steps=0)


losses = st.floats(min_value=0.0, max_value=1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(losses, losses), min_size=1, max_size=20), st.floats(1e-6, 1.0),
       st.integers(1, 1000), st.integers(0, 2000), st.floats(0.0, 0.99))
def test_features_stay_in_their_documented_ranges(pairs, eps, total, step, smoothing):
    signal = StepSignal(total, smoothing=smoothing)
    for plus, minus in pairs:
        signal.update(plus, minus, eps)
    progress, log_loss, log_signal = signal.features(step).tolist()
    assert progress == pytest.approx(min(step / total, 1.0))
    assert -1.0 <= log_loss <= 1.0 and -1.5 <= log_signal <= 1.5
    if len(pairs) == 1:  # one pair: no smoothing yet, whatever the factor
        plus, minus = pairs[0]
        loss = max((plus + minus) / 2, 1e-6)
        assert log_loss == pytest.approx(math.tanh(math.log(loss)), rel=1e-5, abs=1e-6)
