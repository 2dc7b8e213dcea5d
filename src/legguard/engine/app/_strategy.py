"""What opens and closes packages: the `Strategy` protocol (market data, funding, packages and engine stats
in; entries and close requests out), the perp-premium trigger that implements it, the `StrategyDriver` that
feeds a strategy from a running engine and carries out what it decides, and the demo's fault plan.

A strategy only proposes: the engine still prices each package from the book and refuses it (abort) when the
spread those limit prices guarantee, after maker fees, is below the configured minimum, and a close is the
engine's passive two-leg exit escalating into the kill switch. Neither the engine nor the runner knows which
strategy runs (docs/strategy.md: the protocol, the funding signal's formula, a user-defined strategy).
"""

from __future__ import annotations

import importlib
import logging
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import trio

from legguard.adapters._venue import FundingRate, FundingRateVenue
from legguard.domain import BookSnapshot, Market, VenueError
from legguard.engine._engine import Engine, EngineMode
from legguard.engine._exits import premium as premium
from legguard.engine._handle import PackageHandle
from legguard.engine._observe import EngineObserver
from legguard.engine._spec import PackageSpec, SpecError
from legguard.fsm import ExecutionStyle, LegRole, State, Transitioned

log = logging.getLogger("legguard.engine.strategy")

FAULT_NAMES: tuple[str, ...] = (
    "reject",
    "postonly_cross",
    "partial_fill",
    "ack_timeout",
    "stream_drop",
    "price_jump",
    "liquidation",
    "actor_crash",
    "late_landing",  # the order reaches the venue after the engine gave up on it (issue 10)
    "stream_lag",  # the order stream runs behind REST: position checks race it (issue 10)
)

# profile -> probability that a package gets a fault
FAULT_PROFILES: dict[str, float] = {"none": 0.0, "light": 0.15, "heavy": 0.6}


@dataclass(frozen=True, slots=True)
class Pair:
    spot_symbol: str
    perp_symbol: str
    quantity: Decimal
    execution: ExecutionStyle = ExecutionStyle.MAKER_MAKER
    maker_leg: LegRole = LegRole.SPOT  # maker-taker: the leg that rests
    max_slippage: Decimal = Decimal("0.0005")  # taker legs' price cap beyond L2

    def spec(self, quantity: Decimal | None = None) -> PackageSpec:
        """A package on this pair, executed as configured."""
        return PackageSpec(
            self.spot_symbol,
            self.perp_symbol,
            self.quantity if quantity is None else quantity,
            execution=self.execution,
            maker_leg=self.maker_leg,
            max_slippage=self.max_slippage,
        )


# --- what a strategy sees ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FundingView:
    """The latest funding read of one perp, and when (trio time) it was read."""

    rate: FundingRate
    read_at: float

    @property
    def next_funding_at(self) -> float | None:
        """The next funding time on the trio clock (the venue's own clock never enters the comparison)."""
        if self.rate.next_funding_ms is None:
            return None
        return self.read_at + (self.rate.next_funding_ms - self.rate.time_ms) / 1000


@dataclass(frozen=True, slots=True)
class PackageView:
    """One package that is not flat, as the engine believes it."""

    package_id: str
    spot_symbol: str
    perp_symbol: str
    state: State
    quantity: Decimal  # as planned (base units)
    spot_held: Decimal  # what the package holds now (base units; the perp short is negative)
    perp_held: Decimal
    spot_price: Decimal  # the planned entry prices
    perp_price: Decimal
    hedged_at: float | None  # trio time it became hedged
    closing: bool  # a close was requested (by any policy)
    funding: Decimal  # funding payments attributed to it so far (quote, signed)


@dataclass(frozen=True, slots=True)
class StatsView:
    """What the engine has measured in this run."""

    dispatched: int  # packages that sent at least one order
    orphaned: int  # of those, packages that were ever orphaned (one leg without the other: the kill switch)
    closed: int  # packages closed flat after a close request
    mode: str  # running | halted | stopping

    @property
    def orphan_rate(self) -> float | None:
        """Orphaned packages per dispatched package; None before the first dispatch."""
        return self.orphaned / self.dispatched if self.dispatched else None


@dataclass(frozen=True, slots=True)
class MarketView:
    """Everything a strategy decides on, at one instant."""

    now: float  # trio time
    books: Mapping[str, BookSnapshot]
    markets: Mapping[str, Market]
    funding: Mapping[str, FundingView]  # perp symbol -> latest read (only for strategies that need funding)
    packages: Sequence[PackageView]  # every package not flat, oldest first
    stats: StatsView


# --- what a strategy decides ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """Open a package for `spec`; `why` (the numbers behind the decision) is journaled with it."""

    spec: PackageSpec
    why: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Close:
    """Close a hedged package (policy `signal`); `reason` and `why` are journaled on its `exit` row."""

    package_id: str
    reason: str
    why: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decisions:
    entries: Sequence[Entry] = ()
    closes: Sequence[Close] = ()


@runtime_checkable
class Strategy(Protocol):
    """A signal. `decide` is called every few tens of milliseconds while the engine runs and must not block.

    Optional attributes a strategy may define: `name` (str, default: the class name; journaled with every
    proposal) and `needs_funding` (bool, default False: the driver then reads the pairs' funding rates every
    `funding_poll` seconds into `MarketView.funding`)."""

    def decide(self, view: MarketView) -> Decisions: ...


def strategy_name(strategy: Strategy) -> str:
    name = getattr(strategy, "name", None)
    return name if isinstance(name, str) and name else type(strategy).__name__


# --- the premium trigger ----------------------------------------------------------------------------------


@dataclass(slots=True)
class PremiumTrigger:
    """Propose a package for a pair when the perp premium over spot exceeds `threshold`, at most once per
    `cooldown` seconds per pair. It never closes: the exit policy (`[exit]`) does."""

    pairs: tuple[Pair, ...]
    threshold: Decimal = Decimal("0.0005")
    cooldown: float = 0.5
    _last: dict[str, float] = field(default_factory=dict)
    name: str = "premium"
    needs_funding: bool = False

    def decide(self, view: MarketView) -> Decisions:
        return Decisions(entries=self._entries(view.books, view.now))

    def propose(self, books: Mapping[str, BookSnapshot], now: float) -> list[PackageSpec]:
        return [e.spec for e in self._entries(books, now)]

    def _entries(self, books: Mapping[str, BookSnapshot], now: float) -> list[Entry]:
        out: list[Entry] = []
        for pair in self.pairs:
            spot, perp = books.get(pair.spot_symbol), books.get(pair.perp_symbol)
            if spot is None or perp is None:
                continue
            p = premium(spot, perp)
            if p is None or p <= self.threshold:
                continue
            if now - self._last.get(pair.spot_symbol, -1e18) < self.cooldown:
                continue
            self._last[pair.spot_symbol] = now
            out.append(Entry(pair.spec(), {"premium": f"{p:.6f}", "threshold": str(self.threshold)}))
        return out


# --- user-defined strategies: kind = "python:module:Class" --------------------------------------------------

PYTHON_PREFIX = "python:"


class StrategyLoadError(ValueError):
    """A `python:module:Class` strategy that cannot be loaded or built; the message says why."""


def load_strategy_class(kind: str, search: Path | None = None) -> type[Any]:
    """The class `python:module:Class` names. The module is imported from `sys.path`, and from `search` (the
    config file's directory) first when given."""
    target = kind.removeprefix(PYTHON_PREFIX)
    module_name, _, class_name = target.partition(":")
    if not module_name or not class_name or ":" in class_name:
        raise StrategyLoadError("expected python:<module>:<Class>, e.g. python:my_signal:MySignal")
    added = search is not None and str(search) not in sys.path
    if added:
        sys.path.insert(0, str(search))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        where = f" (looked in {search} and sys.path)" if search is not None else ""
        raise StrategyLoadError(f"cannot import module {module_name!r}{where}: {exc}") from None
    except Exception as exc:  # the user's module raised while importing: say what, not a traceback
        raise StrategyLoadError(f"importing module {module_name!r} raised {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(str(search))
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise StrategyLoadError(f"module {module_name!r} has no class {class_name!r}")
    if not callable(getattr(cls, "decide", None)):
        raise StrategyLoadError(f"{module_name}:{class_name} has no decide(view) method (the Strategy protocol)")
    return cls


def build_user_strategy(cls: type[Any], pairs: tuple[Pair, ...], params: Mapping[str, Any]) -> Strategy:
    """`cls(pairs, params)`: the configured pairs and the other keys of `[strategy]`; an exception it raises is
    a StrategyLoadError naming it."""
    try:
        strategy = cls(pairs, dict(params))
    except Exception as exc:
        raise StrategyLoadError(f"{cls.__module__}:{cls.__name__}(pairs, params) raised "
                                f"{type(exc).__name__}: {exc}") from None  # fmt: skip
    if not isinstance(strategy, Strategy):
        raise StrategyLoadError(f"{cls.__module__}:{cls.__name__} built an object without decide(view)")
    return strategy


# --- the driver ---------------------------------------------------------------------------------------------


FUNDING_READ_DEADLINE = 5.0  # seconds a funding-rate read may take


def _check(decisions: object) -> None:
    """A strategy's answer is `Decisions` of `Entry(PackageSpec)` and `Close`, or a TypeError saying what is
    not (contained like any other strategy error: nothing of a malformed answer is acted on)."""
    if not isinstance(decisions, Decisions):
        raise TypeError(f"decide() returned {type(decisions).__name__}, expected Decisions")
    for entry in decisions.entries:
        if not isinstance(entry, Entry) or not isinstance(entry.spec, PackageSpec):
            raise TypeError(f"decide() proposed {entry!r}, expected Entry(PackageSpec, why)")
    for close in decisions.closes:
        if not isinstance(close, Close):
            raise TypeError(f"decide() asked to close with {close!r}, expected Close(package_id, reason, why)")


def _text(why: Mapping[Any, Any]) -> dict[str, str]:
    """A strategy's reasons as text, whatever it put in them (the journal keeps text)."""
    return {str(k): str(v) for k, v in why.items()}


class StrategyDriver(EngineObserver):
    """Feeds a strategy from a running engine and carries out its close requests; the caller submits entries
    (the runner checks the entry limits first, the demo adds its faults) and reports them with `submitted`.

    It watches the engine's transitions (`attach`), so that building a view costs the packages not flat, not
    every package of the run. A strategy that raises is contained: the step makes no decision, the error is
    logged (once per distinct message) and noted for `legguard status`; the engine keeps running."""

    def __init__(self, strategy: Strategy, pairs: Sequence[Pair], *, funding_poll: float = 10.0) -> None:
        self.strategy = strategy
        self.name = strategy_name(strategy)
        self.perps = tuple(dict.fromkeys(p.perp_symbol for p in pairs))
        self.funding_poll = funding_poll
        self.funding: dict[str, FundingView] = {}
        self.errors = 0
        self._last_error: str | None = None
        self._open: dict[str, PackageHandle] = {}  # packages not flat (as far as transitions told)
        self._dispatched = 0
        self._orphaned: set[str] = set()
        self._attached: Engine | None = None

    def attach(self, engine: Engine) -> None:
        """Count what the engine already has (recovered packages), then follow its transitions."""
        if self._attached is engine:
            return
        self._attached = engine
        for h in engine.handles.values():
            self._dispatched += bool(h.released)
            if h.ever_orphaned:
                self._orphaned.add(h.package_id)
            if h.core.state is not State.FLAT:
                self._open[h.package_id] = h
        engine.observers.append(self)

    def on_transition(self, handle: PackageHandle, t: Transitioned, now: float) -> None:
        pid = handle.package_id
        if t.source is State.PENDING and t.dest is not State.FLAT:
            self._dispatched += 1
        if t.dest is State.ORPHANED:
            self._orphaned.add(pid)
        if t.dest is State.FLAT:
            self._open.pop(pid, None)
        else:
            self._open[pid] = handle

    @property
    def needs_funding(self) -> bool:
        return getattr(self.strategy, "needs_funding", False) is True

    async def poll_funding(self, engine: Engine) -> None:
        """Read every pair's funding rate every `funding_poll` seconds (a venue without the read: never)."""
        venue = engine.venue
        if not isinstance(venue, FundingRateVenue):
            log.warning("strategy %s needs funding rates, but venue %s cannot read them", self.name,
                        getattr(venue, "name", "?"))  # fmt: skip
            return
        # Not urgent: a read may take longer than an order's acknowledgement (the first one per symbol also
        # reads the funding history for the interval); the strategy ignores reads older than it accepts.
        deadline = max(engine.config.deadlines.ack, FUNDING_READ_DEADLINE)
        while True:
            for symbol in self.perps:
                try:
                    with trio.fail_after(deadline):
                        rate = await venue.fetch_funding_rate(symbol)
                except (trio.TooSlowError, VenueError) as exc:
                    why = str(exc) or f"no answer within {deadline:g}s"
                    log.warning("funding rate of %s: read failed: %s", symbol, why)
                    continue
                self.funding[symbol] = FundingView(rate, trio.current_time())
            await trio.sleep(self.funding_poll)

    def view(self, engine: Engine, now: float) -> MarketView:
        self.attach(engine)
        packages = []
        for pid, h in list(self._open.items()):
            core = h.core
            if core.state is State.FLAT:
                del self._open[pid]
                continue
            exposure = core.exposure()
            plan = core.plan
            packages.append(PackageView(
                pid, plan.spot.symbol, plan.perp.symbol, core.state, plan.quantity, exposure.spot, exposure.perp,
                plan.spot.price, plan.perp.price, h.hedged_at, h.exit_policy is not None, h.funding,
            ))  # fmt: skip
        packages.sort(key=lambda p: self._open[p.package_id].created_at)  # oldest first
        mode = engine.mode.value if engine.mode is not EngineMode.STOPPING else "stopping"
        stats = StatsView(self._dispatched, len(self._orphaned), engine.stats.closed, mode)
        return MarketView(now, engine.books, engine.markets, dict(self.funding), tuple(packages), stats)

    def decide(self, engine: Engine, now: float) -> Decisions:
        try:
            decisions = self.strategy.decide(self.view(engine, now))
            _check(decisions)
        except Exception as exc:
            self.errors += 1
            text = f"strategy {self.name} raised {type(exc).__name__}: {exc}"
            if text != self._last_error:
                self._last_error = text
                log.error("%s (no decisions this step)", text)
                engine.note_error(text)
            return Decisions()
        self._last_error = None
        return decisions

    def close(self, engine: Engine, close: Close) -> bool:
        """Ask the engine to close a package (exit policy `signal`, its numbers on the `exit` row)."""
        try:
            done = engine.request_close(close.package_id, f"{self.name}: {close.reason}", policy="signal",
                                        detail={"strategy": self.name, **_text(close.why)})  # fmt: skip
        except KeyError:
            log.warning("strategy %s asked to close unknown package %r", self.name, close.package_id)
            return False
        return done

    def with_why(self, entry: Entry) -> PackageSpec:
        """The entry's spec carrying the strategy's name and reasons (journaled with the package)."""
        return replace(entry.spec, why={"strategy": self.name, **_text(entry.why)})

    def report(self) -> dict[str, Any]:
        """For the run's summary: the strategy, its errors, and what its own `report()` says, if it has one
        (optional; the funding signal's is its latest evaluation of every pair)."""
        out: dict[str, Any] = {"name": self.name, "errors": self.errors}
        own = getattr(self.strategy, "report", None)
        if callable(own):
            try:
                out["last"] = own()
            except Exception as exc:  # a report is not worth losing the run's summary over
                out["last"] = f"report() raised {type(exc).__name__}: {exc}"
        return out

    def submitted(self, package_id: str, entry: Entry) -> None:
        why = " ".join(f"{k}={v}" for k, v in entry.why.items())
        # Debug: a premium trigger proposes every cooldown; the journal keeps every proposal's why anyway.
        log.debug("%s: %s proposed by %s (%s)", package_id, entry.spec.spot_symbol, self.name, why or "no reason given")


@dataclass(slots=True)
class FaultPlan:
    """Seeded choice of which fault (if any) a new package gets."""

    probability: float
    names: tuple[str, ...]
    rng: random.Random

    @classmethod
    def parse(cls, text: str, seed: int) -> FaultPlan:
        """`none`, `light`, `heavy`, or a comma-separated list of fault names (injected on 60% of packages)."""
        text = text.strip()
        if text in FAULT_PROFILES:
            names = FAULT_NAMES if FAULT_PROFILES[text] > 0 else ()
            return cls(FAULT_PROFILES[text], names, random.Random(seed))
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in FAULT_NAMES]
        if unknown or not names:
            allowed = ", ".join((*FAULT_PROFILES, *FAULT_NAMES))
            raise SpecError("--faults", text, f"use a profile or comma-separated names from: {allowed}")
        return cls(FAULT_PROFILES["heavy"], names, random.Random(seed))

    def pick(self) -> str | None:
        if not self.names or self.rng.random() >= self.probability:
            return None
        return self.rng.choice(self.names)
