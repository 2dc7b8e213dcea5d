"""`MeteredVenue`: requests timed by endpoint, answers (rejections) are not failures, three failures in a row
declare an outage and the next success ends it; capabilities beyond the protocol pass through."""

from __future__ import annotations

from typing import Any

import pytest

from legguard.domain import OrderNotFound, OutcomeUnknown
from legguard.engine._deadman import CountdownVenue
from legguard.engine.app._instrument import OUTAGE_AFTER, metered


class Flaky:
    name = "flaky"

    def __init__(self) -> None:
        self.fail: BaseException | None = None

    async def fetch_positions(self) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        return {}

    def release(self, armed: list[Any]) -> str:
        return "released"


class WithCountdown(Flaky):
    async def countdown_cancel_all(self, symbol: str, countdown_ms: int) -> None:
        return None


async def test_outage_after_consecutive_failures_and_its_end() -> None:
    inner = Flaky()
    observed: list[tuple[str, str | None]] = []
    health: list[tuple[bool, str]] = []
    venue = metered(inner, lambda e, s, err: observed.append((e, err)), lambda ok, d: health.append((ok, d)))  # type: ignore[arg-type]

    inner.fail = OrderNotFound("x")  # an answer: the venue is up
    for _ in range(OUTAGE_AFTER + 1):
        with pytest.raises(OrderNotFound):
            await venue.fetch_positions()
    assert health == []
    inner.fail = OutcomeUnknown("gateway timeout")
    for _ in range(OUTAGE_AFTER + 2):
        with pytest.raises(OutcomeUnknown):
            await venue.fetch_positions()
    inner.fail = None
    await venue.fetch_positions()
    await venue.fetch_positions()

    assert [ok for ok, _ in health] == [False, True]
    assert "3 venue requests failed in a row; last fetch_positions: gateway timeout" in health[0][1]
    assert observed[0] == ("fetch_positions", "OrderNotFound") and observed[-1] == ("fetch_positions", None)


def test_capabilities_pass_through() -> None:
    plain, with_countdown = metered(Flaky()), metered(WithCountdown())  # type: ignore[arg-type]
    assert plain.release([]) == "released"
    assert not isinstance(plain, CountdownVenue)
    assert isinstance(with_countdown, CountdownVenue)
