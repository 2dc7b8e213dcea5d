"""`MeteredVenue`: requests timed by endpoint, failures counted by type; capabilities beyond the protocol pass
through unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from legguard.domain import OrderNotFound, OutcomeUnknown
from legguard.engine._deadman import CountdownVenue
from legguard.engine.app._instrument import metered


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


async def test_requests_timed_by_endpoint_and_failures_counted_by_type() -> None:
    inner = Flaky()
    observed: list[tuple[str, str | None]] = []
    venue = metered(inner, lambda e, s, err: observed.append((e, err)))  # type: ignore[arg-type]

    await venue.fetch_positions()
    inner.fail = OrderNotFound("x")
    with pytest.raises(OrderNotFound):
        await venue.fetch_positions()
    inner.fail = OutcomeUnknown("gateway timeout")
    with pytest.raises(OutcomeUnknown):
        await venue.fetch_positions()

    assert observed == [("fetch_positions", None), ("fetch_positions", "OrderNotFound"),
                        ("fetch_positions", "OutcomeUnknown")]  # fmt: skip


def test_capabilities_pass_through() -> None:
    plain, with_countdown = metered(Flaky()), metered(WithCountdown())  # type: ignore[arg-type]
    assert plain.release([]) == "released"
    assert not isinstance(plain, CountdownVenue)
    assert isinstance(with_countdown, CountdownVenue)
