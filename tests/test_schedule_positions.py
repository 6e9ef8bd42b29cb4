"""A client's epochs are read through int32 row positions (``jaxqfl.engine.schedule``): too many are refused.

Step s of ``local_epochs=E`` reads positions ``s*B .. s*B + B - 1`` of the ``E * n_max`` positions of the
epochs' orders, computed in int32 inside the round; past 2^31 - 1 they would wrap to negative rows.
"""
import pytest

from jaxqfl.engine.schedule import LocalSchedule

INT32_MAX = 2**31 - 1


@pytest.mark.parametrize("n_max, batch", [(14_025, 10), (1, 1), (50_000, 32)])
def test_epochs_are_refused_exactly_where_their_last_batch_passes_int32(n_max, batch):
    most = (INT32_MAX - batch) // n_max  # the most epochs whose positions, last batch included, fit
    steps = LocalSchedule(local_epochs=most, batch_size=batch).num_steps(n_max)
    assert (steps - 1) * batch + batch - 1 <= INT32_MAX  # the last step's last position fits
    with pytest.raises(ValueError, match=r"row positions; at most .* \(a client's positions are 32-bit integers\)"):
        LocalSchedule(local_epochs=most + 1, batch_size=batch).num_steps(n_max)


def test_local_steps_draw_rows_and_are_not_bounded_by_positions():
    assert LocalSchedule(local_steps=INT32_MAX, batch_size=10).num_steps(10**9) == INT32_MAX
