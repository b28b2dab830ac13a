"""RTC prefix weights W (RTC eq. 5): pinned values for (H, s, d) in every schedule."""

import math

import pytest
import torch

from chunking.soft_mask import prefix_weights

# H = 8, d = 2, s = 3: frozen 0..1, overlap 2..4 (c = 3/4, 2/4, 1/4), empty from H - s = 5.
PINNED = {
    "exp": [1.0, 1.0, 0.48755, 0.18877, 0.04132, 0.0, 0.0, 0.0],
    "linear": [1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0],
    "ones": [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
    "zeros": [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
}


@pytest.mark.parametrize("schedule", sorted(PINNED))
def test_weights_for_h8_s3_d2_match_the_pinned_values(schedule):
    w = prefix_weights(8, 2, 3, schedule)
    assert w.shape == (1, 8)
    assert torch.allclose(w[0], torch.tensor(PINNED[schedule]), atol=1e-4)


def test_exp_schedule_is_c_times_expm1_c_over_e_minus_1_in_the_overlap():
    # H = 16, d = 3, s = 5: overlap 3..10, c_i = (11 - i) / 9.
    w = prefix_weights(16, 3, 5, "exp")[0]
    for i in range(3, 11):
        c = (11 - i) / 9
        assert math.isclose(w[i].item(), c * math.expm1(c) / (math.e - 1), rel_tol=1e-5)
    assert w[:3].tolist() == [1.0, 1.0, 1.0]
    assert w[11:].abs().sum().item() == 0.0


def test_zero_delay_has_no_frozen_prefix_but_a_decaying_overlap():
    w = prefix_weights(8, 0, 1, "exp")[0]  # overlap 0..6, c_i = (7 - i) / 8
    assert w[0].item() == pytest.approx(0.875 * math.expm1(0.875) / (math.e - 1), rel=1e-5)
    assert w[7].item() == 0.0
    assert bool((w[:-1][1:] < w[:-1][:-1]).all())  # strictly decreasing over the overlap


def test_delay_past_the_overlap_is_clamped_to_its_end():
    # d = 5 > H - s = 4: only the 4 actions the old chunk still has are frozen.
    assert prefix_weights(8, 5, 4, "exp")[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_per_item_d_and_s_give_per_item_rows():
    d = torch.tensor([0, 2, 5])
    s = torch.tensor([1, 3, 4])
    w = prefix_weights(8, d, s, "linear")
    assert w.shape == (3, 8)
    for row, (di, si) in enumerate(zip(d.tolist(), s.tolist())):
        assert torch.equal(w[row], prefix_weights(8, di, si, "linear")[0])


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError):
        prefix_weights(8, 1, 2, "cosine")  # type: ignore[arg-type]
