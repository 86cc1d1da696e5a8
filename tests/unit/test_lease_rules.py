"""The pure rules of the lease manager: the fair share, and when a probe calls for a heartbeat at once."""

from __future__ import annotations

import pytest

from syncd.daemon.leases import ProbeResult, fair_share, needs_heartbeat


@pytest.mark.parametrize(
    ("candidates", "live", "share"), [(0, 1, 0), (4, 1, 4), (4, 2, 2), (4, 3, 2), (5, 2, 3), (3, 0, 3)]
)
def test_fair_share(candidates: int, live: int, share: int) -> None:
    assert fair_share(candidates, live) == share


@pytest.mark.parametrize(
    ("probe", "held", "live_before", "beat"),
    [
        (ProbeResult(live_replicas=2, candidates=4, free=0), 2, 2, False),  # steady state
        (ProbeResult(live_replicas=1, candidates=4, free=2), 2, 2, True),  # a replica died: take its accounts
        (ProbeResult(live_replicas=3, candidates=4, free=0), 2, 2, True),  # one joined: rebalance
        (ProbeResult(live_replicas=2, candidates=4, free=1), 1, 2, True),  # below the share, something free
        (ProbeResult(live_replicas=3, candidates=4, free=1), 2, 3, False),  # at the share: others take it
        (ProbeResult(live_replicas=2, candidates=2, free=0), 2, 2, True),  # above the share (accounts paused)
    ],
)
def test_needs_heartbeat(probe: ProbeResult, held: int, live_before: int, beat: bool) -> None:
    """Guards the probe's trigger: a dead replica's accounts must not wait for the next heartbeat."""
    assert needs_heartbeat(probe, held=held, live_replicas=live_before) is beat
