"""Point 4 of issue 6's proof: the same federation assertions in traditional mode, on a
topology where servers are routable (topology.build_routable: every server of both
datacenters on one bridge, one /22): the secondary's servers ``retry_join_wan`` a primary
server's WAN gossip port; no TLS, no gateways, no federation states. One federation for the
module; the tests run in file order (cold start first).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from netns.federation import (
    Federation,
    check_cold_start,
    check_primary_server_restart,
    heal,
    running_federation,
)

COLD_START_BUDGET = 10.0
HEAL = 60.0


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_federation(tmp_path_factory.mktemp("traditional"), False, 1) as f:
        yield f


@pytest.mark.timeout(120)
def test_cold_start(fed: Federation) -> None:
    check_cold_start(fed, COLD_START_BUDGET)


@pytest.mark.timeout(180)
def test_primary_server_restarted(fed: Federation) -> None:
    heal(fed, HEAL)
    check_primary_server_restart(fed, HEAL)
