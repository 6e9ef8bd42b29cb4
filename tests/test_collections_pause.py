"""``fewer_collections`` raises the young generation's threshold inside a run and gives the caller's back."""
import gc

import pytest

from jaxqfl.experiment.collections_pause import YOUNG_THRESHOLD, fewer_collections


def test_the_callers_thresholds_come_back_even_after_an_error():
    before = gc.get_threshold()
    try:
        gc.set_threshold(500, 7, 9)
        with pytest.raises(KeyError):
            with fewer_collections():
                assert gc.get_threshold() == (YOUNG_THRESHOLD, 7, 9)
                raise KeyError("x")
        assert gc.get_threshold() == (500, 7, 9)
        gc.set_threshold(10**6, 7, 9)  # a caller's higher threshold is never lowered
        with fewer_collections():
            assert gc.get_threshold() == (10**6, 7, 9)
    finally:
        gc.set_threshold(*before)
