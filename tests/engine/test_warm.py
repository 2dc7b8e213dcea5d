"""Keeping the decision path warm (`_warm.HotPathWarmer`): it runs on the real clock only, touches nothing real
— the journal's rows, the package, the venue's orders are as they were — and a round that fails switches
warming off, never the engine."""

from __future__ import annotations

import logging
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from legguard.adapters.sim._venue import SimConfig, open_sim_venue
from legguard.engine import Deadlines, Engine, EngineConfig, PackageSpec
from legguard.engine._warm import HotPathWarmer
from legguard.engine.app._runner import summary
from legguard.engine.journal._store import Journal
from legguard.fsm import State

ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"
SPEC = PackageSpec(ETH, ETH_PERP, Decimal("0.05"), min_spread=Decimal(-1))
# Real time in two tests: a fill deadline that ends a resting package (hedged, or flat) in a fraction of a second.
DEADLINES = Deadlines(ack=5.0, fill=0.3, unwind=30.0, leg=30.0)


def everything(db: Path) -> tuple[list[Any], list[Any], list[Any]]:
    """The journal's rows, meta and packages as another connection reads them."""
    with sqlite3.connect(db) as conn:
        return (
            conn.execute("SELECT * FROM journal ORDER BY seq").fetchall(),
            conn.execute("SELECT * FROM meta ORDER BY key").fetchall(),
            conn.execute("SELECT * FROM packages ORDER BY package_id").fetchall(),
        )


# --- the engine's warmer ------------------------------------------------------------------------------


async def test_the_warmer_is_off_under_a_virtual_clock(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    assert not HotPathWarmer.applies(0.001)
    journal = Journal.open(tmp_path / "journal.db")
    async with open_sim_venue(SimConfig(seed=11)) as venue:
        engine = Engine(venue, journal, EngineConfig(deadlines=DEADLINES, keep_warm=0.001))
        async with engine.running([ETH, ETH_PERP]):
            await trio.sleep(1.0)
        assert engine.warmer.rounds == 0
    journal.close()


def test_the_warmer_runs_on_the_real_clock_and_touches_nothing_real(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"

    async def main() -> None:
        assert HotPathWarmer.applies(0.001) and not HotPathWarmer.applies(None)
        journal = Journal.open(db)
        async with open_sim_venue(SimConfig(seed=11, latency_ms=0, jitter_ms=0)) as venue:
            engine = Engine(venue, journal, EngineConfig(deadlines=DEADLINES, keep_warm=0.001))
            async with engine.running([ETH, ETH_PERP]):
                await trio.sleep(0.2)
                package_id = engine.submit(SPEC)
                handle = engine.handles[package_id]
                with trio.fail_after(30):
                    await handle.wait_until(
                        lambda core: core.state in (State.HEDGED, State.FLAT) and core.is_quiescent()
                    )
                rounds, fingerprint = engine.warmer.rounds, handle.core.fingerprint()
                rows = [r for r in everything(db)[0] if r[2] == package_id]
                orders = dict(venue.engine._orders)  # every order the venue was sent, by (symbol, client id)
                await trio.sleep(0.1)  # the warmer's rounds, on a shadow of this package
                assert engine.warmer.rounds > rounds
                assert engine.warmer.seconds > 0 and engine.warmer.failed is None
                assert handle.core.fingerprint() == fingerprint
                assert [r for r in everything(db)[0] if r[2] == package_id] == rows
                assert {r[2] for r in everything(db)[0]} <= {None, package_id}
                # The shadow's plan is the latest package's, kept when the engine releases the package.
                assert engine.warmer._plan is handle.core.plan
                # `legguard run`'s summary says what warming cost.
                warm = summary(engine, db)["keep_warm"]
                assert warm["interval_s"] == 0.001 and warm["rounds"] >= engine.warmer.rounds - 1
                assert warm["seconds"] > 0 and warm["failed"] is None
                assert dict(venue.engine._orders) == orders
        journal.close()

    trio.run(main)


def test_a_warming_round_that_raises_turns_warming_off_once_and_the_engine_runs_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "journal.db"
    calls: list[None] = []

    def broken(self: HotPathWarmer) -> None:
        calls.append(None)
        raise ValueError("a shadow the core refused")

    monkeypatch.setattr(HotPathWarmer, "decide", broken)

    async def main() -> None:
        journal = Journal.open(db)
        async with open_sim_venue(SimConfig(seed=11, latency_ms=0, jitter_ms=0)) as venue:
            engine = Engine(venue, journal, EngineConfig(deadlines=DEADLINES, keep_warm=0.001))
            async with engine.running([ETH, ETH_PERP]):
                await trio.sleep(0.1)
                assert engine.warmer.failed == "ValueError: a shadow the core refused"
                assert engine.warmer.rounds == 0 and len(calls) == 1  # stopped at the first failure
                package_id = engine.submit(SPEC)  # trading goes on
                with trio.fail_after(30):
                    await engine.handles[package_id].wait_until(lambda core: core.state is not State.PENDING)
        journal.close()

    with caplog.at_level(logging.INFO, logger="legguard.engine"):
        trio.run(main)
    turned_off = [r.getMessage() for r in caplog.records if "warming" in r.getMessage()]
    assert turned_off == ["hot path warming turned off (ValueError: a shadow the core refused)"]


def test_the_shadow_decision_needs_a_package_first(tmp_path: Path) -> None:
    class NoPackages:
        def __init__(self) -> None:
            self.handles: dict[str, Any] = {}

    HotPathWarmer(NoPackages()).decide()  # type: ignore[arg-type]  # nothing to build a shadow from: no-op


def test_the_engine_does_not_warm_unless_asked_to(tmp_path: Path) -> None:
    async def main() -> None:
        journal = Journal.open(tmp_path / "journal.db")
        async with open_sim_venue(SimConfig(seed=11, latency_ms=0, jitter_ms=0)) as venue:
            engine = Engine(venue, journal, EngineConfig(deadlines=DEADLINES))  # keep_warm: the default
            async with engine.running([ETH, ETH_PERP]):
                engine.submit(SPEC)
                await trio.sleep(0.05)
                assert engine.config.keep_warm is None and engine.warmer.rounds == 0
                assert "keep_warm" not in summary(engine, tmp_path / "journal.db")
        journal.close()

    trio.run(main)
