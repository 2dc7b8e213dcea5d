"""The `Strategy` protocol: a user-defined strategy drives the demo's and the runner's machinery (entries with
their reasons journaled, closes through the engine's exit), a strategy that raises is contained, a bad
`python:` path is one clear error, and the premium trigger decides as before."""

from __future__ import annotations

import itertools
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from trio.testing import MockClock

from legguard.domain import BookSnapshot
from legguard.engine import Journal
from legguard.engine.app._config import ConfigError, load_config
from legguard.engine.app._demo import DemoOptions, run_demo
from legguard.engine.app._runner import RunOptions, RunStatus, run_engine
from legguard.engine.app._strategy import (
    Close,
    Decisions,
    Entry,
    MarketView,
    Pair,
    PremiumTrigger,
    StatsView,
    Strategy,
    StrategyLoadError,
    load_strategy_class,
)
from legguard.fsm import State

D = Decimal
ETH, ETH_PERP = "ETH/USDT", "ETH/USDT:USDT"


class OpenThenClose:
    """A user's strategy: one package on the first pair; close it once it has been hedged for 2 s."""

    name = "open-then-close"
    needs_funding = True

    def __init__(self, pairs: tuple[Pair, ...], params: dict[str, Any]) -> None:
        self.pair = pairs[0]
        self.hold = float(params.get("hold", 2.0))
        self.opened = False
        self.views: list[MarketView] = []

    def decide(self, view: MarketView) -> Decisions:
        self.views.append(view)
        if not self.opened and self.pair.spot_symbol in view.books:
            self.opened = True
            return Decisions(entries=[Entry(self.pair.spec(), {"note": "first package", "n": 1})])
        closes = [
            Close(p.package_id, "held long enough", {"held_s": f"{view.now - p.hedged_at:.1f}"})
            for p in view.packages
            if p.state is State.HEDGED and p.hedged_at is not None and view.now - p.hedged_at >= self.hold
            and not p.closing
        ]  # fmt: skip
        return Decisions(closes=closes)


def exit_rows(journal: Journal, package_id: str) -> list[dict[str, Any]]:
    return [r.payload for r in journal.timeline(package_id) if r.kind == "exit"]


async def test_a_user_strategy_drives_the_demo(autojump_clock: MockClock, tmp_path: Path) -> None:
    pairs = DemoOptions().pairs
    strategy = OpenThenClose(pairs, {})
    options = DemoOptions(seconds=10, faults="none", db=tmp_path / "demo.db", strategy=strategy)

    report = await run_demo(options)

    assert report["packages_total"] == 1 and report["final_states"] == {"flat": 1}
    assert report["exits_by_policy"] == {"signal": 1} and report["venue_truth"]["ok"]
    with Journal.open(tmp_path / "demo.db", readonly=True) as journal:
        [pid] = journal.package_ids()
        created = journal.timeline(pid)[0].payload
        assert created["spec"]["why"] == {"strategy": "open-then-close", "note": "first package", "n": "1"}
        [exit_row] = exit_rows(journal, pid)
        assert exit_row["policy"] == "signal" and exit_row["reason"] == "open-then-close: held long enough"
        assert exit_row["detail"]["strategy"] == "open-then-close" and float(exit_row["detail"]["held_s"]) >= 2
    # It saw the market, its package and the demo venue's funding read (needs_funding).
    last = strategy.views[-1]
    assert ETH in last.books and ETH_PERP in last.funding and last.stats.dispatched == 1
    assert any(p.state is State.HEDGED for v in strategy.views for p in v.packages)


MODULE = """
from legguard.engine.app._strategy import Close, Decisions, Entry
from legguard.fsm import State


class Mine:
    name = "mine"

    def __init__(self, pairs, params):
        self.pair = pairs[0]
        self.hold = float(params["hold"])
        self.opened = False

    def decide(self, view):
        if not self.opened and self.pair.spot_symbol in view.books:
            self.opened = True
            return Decisions(entries=[Entry(self.pair.spec(), {"note": "from a file"})])
        return Decisions(closes=[Close(p.package_id, "done") for p in view.packages
                                 if p.state is State.HEDGED and not p.closing
                                 and view.now - p.hedged_at >= self.hold])


class Broken:
    def __init__(self, pairs, params):
        self.calls = 0

    def decide(self, view):
        self.calls += 1
        raise RuntimeError("my bug")


class Sloppy:
    def __init__(self, pairs, params):
        pass

    def decide(self, view):
        return Decisions(entries=[{"spot": "ETH/USDT"}])
"""

_names = itertools.count()


def user_config(tmp_path: Path, cls: str, extra: str = "") -> Path:
    """A sim config whose strategy is `cls` of a module written beside it (a fresh module name per test)."""
    module = f"user_strategy_{next(_names)}"
    (tmp_path / f"{module}.py").write_text(MODULE)
    config = tmp_path / "run.toml"
    config.write_text(
        f'[venue]\nkind = "sim"\n[[pairs]]\nspot = "{ETH}"\nperp = "{ETH_PERP}"\nquantity = "0.05"\n'
        f'[strategy]\nkind = "python:{module}:{cls}"\n{extra}'
    )
    return config


async def test_a_user_strategy_from_the_config_drives_the_runner(autojump_clock: MockClock, tmp_path: Path) -> None:
    config = load_config(user_config(tmp_path, "Mine", "hold = 2\n"))
    db = tmp_path / "j.db"

    status = RunStatus()

    report = await run_engine(config, db, 8.0, status, options=RunOptions(control=False))

    assert report["strategy"] == {"name": "mine", "errors": 0}
    assert status.rpc is not None and status.rpc.status()["strategy"] == {"name": "mine", "errors": 0}
    assert report["packages_total"] == 1 and report["final_states"] == {"flat": 1}
    assert report["exits_by_policy"] == {"signal": 1} and report["venue_check"]["ok"]
    with Journal.open(db, readonly=True) as journal:
        [pid] = journal.package_ids()
        assert journal.timeline(pid)[0].payload["spec"]["why"] == {"strategy": "mine", "note": "from a file"}
        assert exit_rows(journal, pid)[0]["reason"] == "mine: done"


async def test_a_strategy_that_raises_is_contained(autojump_clock: MockClock, tmp_path: Path) -> None:
    config = load_config(user_config(tmp_path, "Broken"))
    status = RunStatus()

    report = await run_engine(config, tmp_path / "j.db", 3.0, status, options=RunOptions(control=False))

    assert report["strategy"]["errors"] > 10 and report["packages_total"] == 0
    assert report["venue_check"]["ok"]
    assert status.engine is not None
    # Noted once for the operator (legguard status), not once per step.
    assert [e for _, _, e in status.engine.stats.errors] == ["strategy Broken raised RuntimeError: my bug"]


async def test_a_malformed_answer_is_contained_and_nothing_of_it_acted_on(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    config = load_config(user_config(tmp_path, "Sloppy"))
    status = RunStatus()

    report = await run_engine(config, tmp_path / "j.db", 2.0, status, options=RunOptions(control=False))

    assert report["strategy"]["errors"] > 10 and report["packages_total"] == 0
    assert status.engine is not None
    [error] = [e for _, _, e in status.engine.stats.errors]
    assert error.startswith("strategy Sloppy raised TypeError: decide() proposed {'spot': 'ETH/USDT'}")


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("python:nowhere_to_be_found:X", "cannot import module 'nowhere_to_be_found'"),
        ("python:{module}:Missing", "has no class 'Missing'"),
        ("python:{module}", "expected python:<module>:<Class>"),
        ("python:{module}:Mine", "Mine(pairs, params) raised KeyError: 'hold'"),
    ],
)
def test_a_bad_python_strategy_is_one_config_error(tmp_path: Path, kind: str, words: str) -> None:
    path = user_config(tmp_path, "Mine")
    module = path.read_text().split("python:")[1].split(":")[0]
    path.write_text(path.read_text().replace(f"python:{module}:Mine", kind.format(module=module)))

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert "strategy.kind" in str(info.value) and words in str(info.value)


def test_a_class_without_decide_is_refused(tmp_path: Path) -> None:
    (tmp_path / "no_decide_here.py").write_text("class Nope:\n    pass\n")

    with pytest.raises(StrategyLoadError, match="no decide"):
        load_strategy_class("python:no_decide_here:Nope", tmp_path)


def book(symbol: str, bid: str, ask: str) -> BookSnapshot:
    return BookSnapshot(symbol, ((D(bid), D(1)),), ((D(ask), D(1)),), 0.0)


def test_the_premium_trigger_is_a_strategy_and_decides_as_before() -> None:
    trigger = PremiumTrigger((Pair(ETH, ETH_PERP, D("0.05")),), threshold=D("0.001"), cooldown=1.0)
    rich = {ETH: book(ETH, "1999.9", "2000.1"), ETH_PERP: book(ETH_PERP, "2003.9", "2004.1")}  # +0.2 %
    flat = {ETH: rich[ETH], ETH_PERP: book(ETH_PERP, "2000.9", "2001.1")}  # +0.05 %

    def at(books: dict[str, BookSnapshot], now: float) -> Decisions:
        return trigger.decide(MarketView(now, books, {}, {}, (), StatsView(0, 0, 0, "running")))

    assert isinstance(trigger, Strategy)
    [entry] = at(rich, 0.0).entries
    assert entry.spec.quantity == D("0.05") and entry.why == {"premium": "0.002000", "threshold": "0.001"}
    assert at(rich, 0.5).entries == []  # cooldown
    assert at(flat, 2.0).entries == [] and not at(flat, 2.0).closes  # it never closes: [exit] does
    assert len(at(rich, 2.0).entries) == 1


DOC = Path(__file__).parents[3] / "docs" / "strategy.md"


def doc_blocks(language: str) -> list[str]:
    text = DOC.read_text().split("## A strategy of your own", 1)[1]
    return [block.split("\n", 1)[1] for block in text.split("```")[1::2] if block.startswith(language + "\n")]


async def test_the_documented_user_strategy_runs_as_documented(autojump_clock: MockClock, tmp_path: Path) -> None:
    [code] = doc_blocks("python")
    [table] = doc_blocks("toml")
    (tmp_path / "my_signal.py").write_text(code)
    config = tmp_path / "run.toml"
    config.write_text(
        f'[venue]\nkind = "sim"\n[[pairs]]\nspot = "{ETH}"\nperp = "{ETH_PERP}"\nquantity = "0.05"\n'
        + table.replace("hold = 30", "hold = 3")  # a short holding time for a short run
    )

    report = await run_engine(load_config(config), tmp_path / "j.db", 20.0, options=RunOptions(control=False))

    assert report["strategy"] == {"name": "rich-perp", "errors": 0}
    assert report["packages_total"] >= 2 and report["exits_by_policy"].get("signal", 0) >= 1
    assert report["venue_check"]["ok"] and not report["needs_recovery"]


class EverySecond:
    """Opens a package on the first pair every second and records what it saw."""

    def __init__(self, pair: Pair) -> None:
        self.pair = pair
        self.next_at = 0.0
        self.views: list[MarketView] = []

    def decide(self, view: MarketView) -> Decisions:
        self.views.append(view)
        if view.now < self.next_at or self.pair.spot_symbol not in view.books:
            return Decisions()
        self.next_at = view.now + 1.0
        return Decisions(entries=[Entry(self.pair.spec())])


async def test_the_view_counts_dispatched_and_orphaned_packages_as_the_engine_does(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    strategy = EverySecond(DemoOptions().pairs[0])
    options = DemoOptions(seconds=12, faults="reject,partial_fill,ack_timeout", db=tmp_path / "d.db", strategy=strategy)

    report = await run_demo(options)

    stats = strategy.views[-1].stats
    assert report["orphaned_total"] >= 1 and stats.orphaned == report["orphaned_total"]
    assert 1 <= stats.dispatched <= report["packages_total"] and stats.orphan_rate is not None
    # Only packages not flat are in the view; each once.
    ids = [p.package_id for p in strategy.views[-1].packages]
    assert len(ids) == len(set(ids)) and all(p.state is not State.FLAT for p in strategy.views[-1].packages)
