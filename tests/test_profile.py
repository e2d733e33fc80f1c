"""oats.profile: seconds, calls and peak RSS per phase; nested phases count toward both; off by default."""
import sys

import numpy as np
import pytest

from oats import profile
from oats.profile import Profile, phase, rss_mib

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def test_phase_without_profile_records_nothing():
    with phase("x"):
        pass
    assert profile._ACTIVE == []


@linux
def test_peak_of_a_phase_sees_its_allocation_and_outer_phase_too():
    with Profile() as prof:
        with phase("outer"):
            with phase("small"):
                a = np.ones(1 << 20)  # 8 MiB
            with phase("big"):
                b = np.ones(64 << 20)  # 512 MiB, freed below
                b[::512] = 2.0
                del b
            with phase("small"):
                pass
    rows = prof.rows
    assert list(rows) == ["outer", "small", "big"]
    assert rows["small"]["calls"] == 2 and rows["big"]["calls"] == 1
    assert rows["big"]["peak_mib"] > rows["small"]["peak_mib"] + 400
    assert rows["outer"]["peak_mib"] >= rows["big"]["peak_mib"]
    assert rows["outer"]["seconds"] >= rows["big"]["seconds"] + rows["small"]["seconds"]
    now, _ = rss_mib()
    assert now < rows["big"]["peak_mib"]
    assert "big" in prof.table() and a.sum() > 0


@linux
def test_whole_profile_peak_outlives_the_per_phase_resets():
    """The kernel's high-water mark (and so ru_maxrss) is reset at each phase; peak_mib still sees the
    largest phase's peak after a later, smaller phase."""
    with Profile() as prof:
        with phase("big"):
            b = np.ones(64 << 20)  # 512 MiB
            b[::512] = 2.0
            del b
        with phase("small"):
            pass
    assert prof.peak_mib >= prof.rows["big"]["peak_mib"] > rss_mib()[1] + 400
