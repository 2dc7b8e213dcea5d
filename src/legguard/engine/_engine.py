"""The supervisor: owns the venue gateway, the book watchers and one actor task per package, all in trio
nurseries. A package actor that raises never takes the engine or other packages down: the supervisor journals
the fault with its traceback, rebuilds the package's core from its event log and hands it `Fault`, which routes
it into the kill switch. A circuit breaker halts new packages when orphan events come too fast.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import secrets
import time
import traceback
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from decimal import ROUND_CEILING, ROUND_DOWN, Decimal

import trio

from legguard.adapters._venue import FundingVenue, Venue
from legguard.domain import (
    Balance,
    BookSnapshot,
    Market,
    OrderNotFound,
    OrderOrigin,
    OrderRejected,
    OrderRequest,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RateLimited,
    Side,
    StreamDisconnected,
    VenueError,
)
from legguard.fsm import (
    Abort,
    CloseRequested,
    Dispatch,
    Event,
    ExecutionStyle,
    LegPlan,
    LegRole,
    PackageCore,
    PackagePlan,
    Purpose,
    Shutdown,
    State,
    Transitioned,
    VenueReduction,
)

from . import _crashpoints
from ._actor import PackageActor, crash_of, fault_event, to_order_event
from ._crashpoints import ARMED as CRASH_ARMED
from ._deadman import DeadMan
from ._exits import BalanceCheck, ExitPolicy, MarginGuard, inventory_refusal
from ._funding import FundingBook
from ._group import GroupCommit
from ._handle import PackageHandle, Precedence
from ._host import EngineStats, Timers
from ._observe import EngineObserver, HaltSource, notify
from ._outage import VenueWatch, waiting_out_rate_limits
from ._pricing import (
    PriceMemo,
    PricingRefused,
    dust_threshold,
    maker_buy_price,
    maker_sell_price,
)
from ._recovery import RecoveryReport
from ._recovery import recover as recover_packages
from ._retired import ZERO, KnownOrder, RetiredPackages
from ._spec import EngineConfig, PackageSpec, validate_spec
from ._warm import HotPathWarmer
from .journal import FUNDING, LATE_FEE, PNL, Journal, ReplayMismatch, desk_dust, package_pnl, replay_package
from .journal._pnl import apply_late_fee, funding_amount

log = logging.getLogger("legguard.engine")

# A package actor that raises this many times in a row is abandoned (and the engine halted) instead of being
# restarted forever.
MAX_RESTARTS = 5


class EngineMode(enum.StrEnum):
    RUNNING = "running"
    HALTED = "halted"  # no new packages; unwinds continue; an operator resumes
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class VenueBaseline:
    spot: Mapping[str, Decimal]  # asset -> balance not held for any package
    perp: Mapping[str, Decimal]  # perp symbol -> position not held for any package

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"spot": {k: str(v) for k, v in sorted(self.spot.items())},
                "perp": {k: str(v) for k, v in sorted(self.perp.items())}}  # fmt: skip


class Engine:
    def __init__(self, venue: Venue, journal: Journal, config: EngineConfig | None = None) -> None:
        self.venue = venue
        # A venue that can write a cancel the moment it reads the answer it waits for, ahead of that answer's
        # step (`CcxtVenue.cancel_on_answer`): the kill switch's first cancel, armed when the other leg's
        # refusal came first or the package is naked. None: the cancel leaves from the answer's step.
        self.cancel_on_answer: Callable[[str, bool, str, str], None] | None = getattr(venue, "cancel_on_answer", None)
        self.journal = journal
        self.group = GroupCommit(journal)  # the actors' steps commit per scheduler round (write-ahead)
        self.config = config or EngineConfig()
        self.markets: Mapping[str, Market] = {}
        self.books: dict[str, BookSnapshot] = {}
        # Packages in memory: live, hedged, or finished but not yet released. A flat, quiescent package whose
        # actor ended is released into `retired` (counters, residual dust, late-landing routing).
        self.handles: dict[str, PackageHandle] = {}
        self.retired = RetiredPackages(journal)
        self.live: set[str] = set()  # packages neither flat nor hedged (the risk limit counts them)
        self.precedence = Precedence()  # the kill switch's events before routine work (`_handle.py`)
        # The package whose dispatch a submitter's stack took in this scheduler round (`_dispatch_now`), until
        # its task starts (the next round): the rest of a burst share that round's group commit instead.
        self._stack_dispatched: PackageHandle | None = None
        self.mode = EngineMode.RUNNING
        self.halt_reason = ""
        self.paused_until = 0.0  # rate-limit back-off for new packages
        self.stats = EngineStats()
        self.warmer = HotPathWarmer(self)
        self._orders: dict[str, PackageHandle] = {}  # client order id -> package
        self._orphan_times: deque[float] = deque()
        # (symbol, venue-originated order id) -> filled already accounted for (liquidation / ADL)
        self._liquidations: dict[tuple[str, str], Decimal] = {}
        # symbol -> perp short the position check found missing and charged before the order stream reported
        # the venue reduction behind it: the stream's later report of that reduction is not charged again.
        self._charged_ahead: dict[str, Decimal] = {}
        self._late_seen: set[tuple[str, str]] = set()  # orders of finished packages being settled (rare)
        self._settling = 0  # engine-sent orders in flight (late-order and surplus closes): venue in motion
        # What the account held at the venue that no package of this engine accounts for (taken at start and
        # after recovery, journaled as `venue_baseline`): the venue must equal it plus the packages' beliefs.
        self.baseline: VenueBaseline | None = None
        self._suspect: dict[tuple[str, str], Decimal] = {}  # (kind, key) -> mismatch seen on the last pass
        self._surplus_seq = 0
        self._service: trio.Nursery | None = None
        self._packages: trio.Nursery | None = None
        self._book_symbols: set[str] = set()
        self.deadman = DeadMan(self, self.config.deadman)  # countdownCancelAll while perp entries rest
        self.timers = Timers()  # every package's fill deadline, in one task
        self.observers: list[EngineObserver] = []  # metrics, alerts (see _observe.py)
        self.halt_source: HaltSource | None = None
        self.resume_at: float | None = None  # breaker cool-off: when the engine resumes by itself
        self._auto_resumed_at: float | None = None  # a trip within breaker.window of this stays halted
        self._resume_wake = trio.Event()
        self.stream_last_message: float | None = None  # trio time of the last order-stream batch
        self.started_at = 0.0
        self.outage = VenueWatch(self)  # is the venue answering? (no new packages while it is not)
        self.outage.on_change = self._venue_health_changed  # alerts, metrics
        self.exit_policy = ExitPolicy(self)
        self.margin_guard = MarginGuard(self)
        self.balance_check = BalanceCheck(self, self.margin_guard if self.config.risk.margin_guard else None)
        self.funding = FundingBook(journal)  # funding payments attributed to packages (a FundingVenue's)
        # Base asset -> what the desk holds beyond what its open packages account for (fee rounding left by
        # grossed-up buys, kill-switch residuals): derived from the journal at start (`desk_dust`), kept
        # current as packages take it over (`PackagePlan.sweep`) and go flat (docs/accounting.md).
        self.dust: dict[str, Decimal] = {}
        self._prices = PriceMemo()  # the last package's pricing, reused while both books stand
        # The last package's leg plans and what they were built from (compared by identity): reused as they are.
        self._leg_plans: tuple[tuple[object, ...], tuple[LegPlan, LegPlan]] | None = None
        # (spot symbol, taker) -> the fee rate the venue actually kept in base on a hedged package's buy: the
        # next buys are grossed up with it instead of the market metadata's (ccxt's defaults can be above the
        # account's tier).
        self.fee_seen: dict[tuple[str, bool], Decimal] = {}

    @property
    def stopping(self) -> bool:
        return self.mode is EngineMode.STOPPING

    # --- lifetime -------------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self, symbols: list[str] | None = None) -> AsyncIterator[Engine]:
        """Run the engine's services for the duration of the block; on exit (normal, error, or
        cancellation) shut down gracefully: entries cancelled, unwinds finished, hedges kept."""
        self.markets = await self.venue.load_markets()
        self.started_at = trio.current_time()
        self.dust = desk_dust(
            (r.plan.spot.symbol, r.state, r.exposure.spot, r.plan.sweep) for r in self.journal.packages()
        )
        self.journal.record("engine", None, {"event": "started", "venue": self.venue.name}, trio.current_time())
        await self.take_baseline()
        async with trio.open_nursery() as service:
            self._service = service
            service.start_soon(self.timers.run)
            service.start_soon(self._gateway)
            service.start_soon(self._position_reconciler)
            service.start_soon(self.deadman.run)
            service.start_soon(self._breaker_cooloff)
            service.start_soon(self.outage.run)
            service.start_soon(self.warmer.run)
            if isinstance(self.venue, FundingVenue) and self.config.funding_interval is not None:
                service.start_soon(self._funding_poller, self.venue)
            if self.config.exit.enabled:
                service.start_soon(self.exit_policy.run)
            if self.config.risk.margin_guard:
                service.start_soon(self.margin_guard.run)
            for symbol in symbols or []:
                await self.watch_book(symbol)
            try:
                async with trio.open_nursery() as packages:
                    self._packages = packages
                    try:
                        yield self
                    finally:
                        with trio.CancelScope(shield=True) as scope:
                            scope.deadline = trio.current_time() + self._shutdown_grace()
                            await self._stop_packages()
                        packages.cancel_scope.cancel()  # stragglers drain themselves, shielded
            finally:
                self.journal.record("engine", None, {"event": "stopped"}, trio.current_time())
                service.cancel_scope.cancel()

    def _shutdown_grace(self) -> float:
        d = self.config.deadlines
        return 2 * d.ack + d.unwind

    async def _stop_packages(self) -> None:
        self.mode = EngineMode.STOPPING
        self.resume_at = None
        self.journal.record("engine", None, {"event": "stopping"}, trio.current_time())
        for h in list(self.handles.values()):
            if not h.done.is_set():
                h.post(Shutdown())
        for h in list(self.handles.values()):
            await h.done.wait()

    async def watch_book(self, symbol: str) -> None:
        if symbol in self._book_symbols:
            return
        self._book_symbols.add(symbol)
        # The first snapshot must succeed before anything trades on the book: a refusal by the request budget
        # (spent by a recovery's queries, say) is waited out, not a failed start.
        self.books[symbol] = await waiting_out_rate_limits(
            lambda: self.venue.fetch_order_book(symbol), f"book {symbol}: the first snapshot"
        )
        assert self._service is not None
        self._service.start_soon(self._book_watcher, symbol)

    async def _book_watcher(self, symbol: str) -> None:
        failures = 0
        while True:
            try:
                book = await self.venue.watch_order_book(symbol)
                await self.precedence.defer()  # the kill switch's pending events first
                self.books[symbol] = book
            except VenueError as exc:
                self.outage.suspect(exc)
                if failures == 0:
                    log.warning("book stream %s: %s; resubscribing", symbol, exc)
                failures += 1
                await trio.sleep(min(0.1 * 2 ** (failures - 1), 2.0))  # quietly, with back-off, while it fails
                continue
            if failures:
                log.info("book stream %s back after %d failed attempt(s)", symbol, failures)
                failures = 0

    # --- packages -------------------------------------------------------------------------------------

    def submit(self, spec: PackageSpec, *, crash_on_event: int | None = None) -> str:
        """Validate, price and start a package; returns its id. Raises SpecError for a malformed spec
        (nothing journaled). Refusals at run time (halted, stale book, spread) end the package in `flat`
        via `abort`, journaled."""
        if self._packages is None:
            raise RuntimeError("the engine is not running: use `async with engine.running():`")
        spot, perp = validate_spec(spec, self.markets)
        now = trio.current_time()
        number = self.journal.next_package_number()
        package_id = f"P{number:06d}"
        refusal = self._refusal(spec, now)
        quantity = spec.quantity
        spot_price = perp_price = Decimal(0)
        priced: dict[str, str] = {}
        style = spec.execution
        if style is ExecutionStyle.MAKER_TAKER:
            spot_taker, perp_taker = spec.maker_leg is not LegRole.SPOT, spec.maker_leg is not LegRole.PERP
        else:
            spot_taker = perp_taker = style is ExecutionStyle.TAKER_TAKER
        size = legs = None
        if refusal is None:
            try:
                # Memoized while both books stand: a burst of packages prices the same books once.
                legs = self._prices.price(
                    self.books[spec.spot_symbol],
                    self.books[spec.perp_symbol],
                    spot,
                    perp,
                    spec.quantity,
                    self.config.min_spread if spec.min_spread is None else spec.min_spread,
                    spot_taker=spot_taker,
                    perp_taker=perp_taker,
                    max_slippage=spec.max_slippage,
                )
                p = legs.priced
                quantity, spot_price, perp_price = p.quantity, p.spot_price, p.perp_price
                priced = {"spread_after_fees": str(p.spread_after_fees)}
                # Exact hedge: the venue keeps the spot buy's fee in base unless fees are paid elsewhere.
                fee = self.fee_seen.get((spot.symbol, spot_taker), spot.taker_fee if spot_taker else spot.maker_fee)
                size = self._prices.size(spot, perp, quantity, spot_price,
                                         fee if self.config.spot_fee_in_base else Decimal(0),
                                         self.dust.get(spot.base, Decimal(0)))  # fmt: skip
                if quantity * spot_price > self.config.max_notional:
                    refusal = f"risk: notional {quantity * spot_price} above max_notional {self.config.max_notional}"
                else:
                    refusal = inventory_refusal(self, spec.spot_symbol, quantity, spot_price)

            except PricingRefused as exc:
                refusal = str(exc)
        if refusal is not None:
            size = None  # a refused package buys nothing: no gross-up, no sweep
        key = (spot, perp, legs, size, spec.spot_side, spec.perp_side, style)
        reuse = self._leg_plans
        if reuse is not None and all(a is b for a, b in zip(reuse[0], key, strict=True)):
            # The same markets, prices and sizing as the last package: its (frozen) leg plans, shared.
            spot_leg, perp_leg = reuse[1]
        else:
            spot_leg = LegPlan(spot.symbol, spec.spot_side, spot_price, spot.step_size,
                               legs.spot_dust if legs is not None else spot.step_size,
                               amount=size.amount if size is not None else None,
                               fee_rate=size.fee_rate if size is not None else Decimal(0))  # fmt: skip
            # Reduce-only perp orders are exempt from the minimum notional: one step is tradable.
            perp_leg = LegPlan(perp.symbol, spec.perp_side, perp_price, perp.step_size,
                               max(perp.step_size, perp.min_qty),
                               # a taker hedge is a new order: the minimum notional applies to it
                               legs.perp_dust if legs is not None and style is not ExecutionStyle.MAKER_MAKER
                               else None)  # fmt: skip
            self._leg_plans = (key, (spot_leg, perp_leg))
        plan = PackagePlan(
            package_id=package_id,
            client_id_prefix=f"lg{self.journal.journal_id}{number:06d}",
            quantity=quantity,
            spot=spot_leg,
            perp=perp_leg,
            policy=spec.policy or self.config.policy,
            style=style,
            maker=spec.maker_leg,
            sweep=size.sweep if size is not None else Decimal(0),
        )
        if plan.sweep:
            self.dust[spot.base] = self.dust.get(spot.base, Decimal(0)) - plan.sweep
        # Journaled with the package's first step (its dispatch), in that step's group commit.
        self.journal.defer_created(plan, {**spec.to_dict(), **priced}, now)
        core = PackageCore(plan)
        handle = PackageHandle.create(core, now, self.precedence)
        handle.crash_on_event = crash_on_event
        self.handles[package_id] = handle
        self.live.add(package_id)
        self.deadman.poke()
        if refusal is None and crash_on_event is None:
            self._dispatch_now(handle)
        else:
            first: Event = Abort(refusal) if refusal is not None else Dispatch()
            self._packages.start_soon(self._supervise, handle, [first], name=f"package {package_id}")
        return package_id

    def _dispatch_now(self, handle: PackageHandle) -> None:
        """The new package's dispatch step, taken here on the submitter's stack when it safely can: decided,
        committed (write-ahead: creation and dispatch rows in one transaction, or in the group a leader holds
        open), both legs armed and released (`Venue.release`: on the wire for the ccxt venue), all before
        `submit` returns and without yielding. The actor's task, which starts the sends awaiting the answers
        and the timers first thing, takes over from there. Otherwise the actor takes the step, as it always
        did: while urgent events wait (a new package waits for the kill switch), while the balance check would
        have to ask the venue, or when the commit fails (nothing released, the core unchanged). And for the
        rest of a burst: one dispatch per scheduler round is taken here, the others of the round commit
        together in the round's group, as before (one transaction each would cost a burst's throughput)."""
        assert self._packages is not None
        name = f"package {handle.package_id}"
        if self.precedence.pending or self._stack_dispatched is not None:
            self._packages.start_soon(self._supervise, handle, [Dispatch()], name=name)
            return
        checked = self.config.risk.check_balances
        if checked:
            if not self.balance_check.answerable():  # a stale snapshot, or a check awaiting the venue now
                self._packages.start_soon(self._supervise, handle, [Dispatch()], name=name)
                return
            refusal = self.balance_check.refusal_now(handle.core)
            if refusal is not None:
                actor = PackageActor(self, handle, [Abort(refusal)])
                self._packages.start_soon(self._supervise, handle, (), actor, name=name)
                return
        actor = PackageActor(self, handle)
        # Started first: once the step is released the package must have its task (the nursery's start_soon
        # raises before anything is released if the engine is closing). It runs only after this returns.
        self._packages.start_soon(self._supervise, handle, (), actor, name=name)
        if actor.step_now(Dispatch()):
            self._stack_dispatched = handle  # until its task starts, in the next scheduler round
        else:
            actor.first = (Dispatch(),)  # the balance (if checked) was reserved here: not checked again

    # --- recovery after a crash -----------------------------------------------------------------------

    async def recover(self) -> RecoveryReport:
        """Bring every package the journal left unfinished back to safety from the venue's facts (see
        `_recovery.recover`); every step is journaled as a `recovery` row. Runs inside `running()`, before any
        new package is opened; `settle_recovered()` then waits for the resumed packages."""
        return await recover_packages(self)

    def _refusal(self, spec: PackageSpec, now: float) -> str | None:
        if self.mode is EngineMode.HALTED:
            return f"engine halted: {self.halt_reason}"
        if self.mode is EngineMode.STOPPING:
            return "engine stopping"
        if self.outage.down:
            return f"venue unreachable: {self.outage.last_error}"
        if now < self.paused_until:
            return "rate limited: new packages paused"
        margin = self.margin_guard.refusal()
        if margin is not None:
            return margin
        live = len(self.live)
        if live >= self.config.max_live_packages:
            return f"risk: {live} live packages (max {self.config.max_live_packages})"
        for symbol in (spec.spot_symbol, spec.perp_symbol):
            book = self.books.get(symbol)
            if book is None:
                return f"no book for {symbol}"
            if now - book.timestamp > self.config.max_book_age:
                return f"stale book for {symbol}: {now - book.timestamp:.2f}s old"
        return None

    async def _supervise(
        self, handle: PackageHandle, first: Sequence[Event], actor: PackageActor | None = None
    ) -> None:
        """Run the package's actor (`actor`: made by `submit`, its first step taken or decided there) to the end,
        restarting it after a fault."""
        if self._stack_dispatched is handle:
            self._stack_dispatched = None  # a new scheduler round: the next submit may dispatch on its stack
        if actor is None and self.config.risk.check_balances and len(first) == 1 and isinstance(first[0], Dispatch):
            # Before every entry: the spot quote and the perp margin it needs, against the venue's balances.
            refusal = await self.balance_check.refusal(handle.core)
            if refusal is None and self.mode is not EngineMode.RUNNING:
                refusal = "engine stopping" if self.stopping else f"engine halted: {self.halt_reason}"
            if refusal is not None:
                first = [Abort(refusal)]
        if actor is None:
            actor = PackageActor(self, handle, first)
        try:
            while True:
                try:
                    await actor.run()
                    return
                except BaseException as exc:
                    crash = crash_of(exc)
                    if crash is None:
                        raise  # cancellation: the actor already drained itself to safety
                    if handle.faults >= MAX_RESTARTS:
                        self._abandon(handle, crash)
                        return
                    actor = self._restart(handle, crash)
        finally:
            handle.done.set()
            handle.drop_urgent()
            handle.pulse()
            handle.send.close()
            self._release(handle)

    def _release(self, handle: PackageHandle) -> None:
        """A package whose actor ended flat, with nothing in flight, its exposure known and every venue
        reduction applied, leaves memory (the journal keeps it): its handle, core, event log, mailbox and
        order routes go; `retired` keeps counters, its residual dust and what late landings need."""
        core = handle.core
        pid = handle.package_id
        if core.state is not State.FLAT or not core.is_quiescent() or self.handles.get(pid) is not handle:
            return
        if core.exposure().unknown or handle.reductions_posted != core.venue_reduced:
            return
        del self.handles[pid]
        self.live.discard(pid)
        for cid in core.orders:
            if self._orders.get(cid) is handle:
                del self._orders[cid]
        self.retired.retire(core, package_pnl(core, handle.funding), handle.ever_orphaned, trio.current_time())
        self.journal.forget_package(pid)

    def core(self, package_id: str) -> PackageCore:
        """A package's core: the live one in memory, else rebuilt from the journal (a released package).
        Raises KeyError for a package this journal does not know."""
        handle = self.handles.get(package_id)
        if handle is not None:
            return handle.core
        try:
            return replay_package(self.journal, package_id)
        except ReplayMismatch as exc:
            raise KeyError(f"no package {package_id!r}: {exc}") from None

    @property
    def packages_total(self) -> int:
        """Every package this engine has held: in memory and released."""
        return len(self.handles) + len(self.retired)

    @property
    def orphaned_total(self) -> int:
        return sum(1 for h in self.handles.values() if h.ever_orphaned) + self.retired.totals.orphaned

    def _restart(self, handle: PackageHandle, crash: BaseException) -> PackageActor:
        """Journal the fault, rebuild the core from the package's own event log, and hand it `Fault`."""
        handle.faults += 1
        self.stats.faults += 1
        tb = "".join(traceback.format_exception(crash))
        log.error("package %s actor raised: %s", handle.package_id, crash)
        self.note_error(f"package {handle.package_id} actor raised: {crash!r}")
        self.journal.record("fault", handle.package_id, {"error": repr(crash), "traceback": tb}, trio.current_time())
        core = PackageCore(handle.core.plan)
        for event in handle.events:
            core.handle(event)
        handle.core = core
        return PackageActor(self, handle, [fault_event(crash)])

    def _abandon(self, handle: PackageHandle, crash: BaseException) -> None:
        """A package whose actor keeps raising is left where the journal says it is, for recovery or an
        operator; the engine stops taking new packages, since something is badly wrong."""
        log.critical("package %s: actor raised %d times, giving up on it: %s", handle.package_id,
                     handle.faults + 1, crash)  # fmt: skip
        self.journal.record("fault", handle.package_id,
                            {"error": repr(crash), "abandoned": True, "state": handle.core.state.value},
                            trio.current_time())  # fmt: skip
        self.halt(f"package {handle.package_id} abandoned after repeated actor faults")

    def register_order(self, client_order_id: str, handle: PackageHandle) -> None:
        self._orders[client_order_id] = handle

    def entry_limit(self, spec: PackageSpec) -> str | None:
        """Why a package for `spec` would be refused by the inventory caps or the margin guard right now
        (estimated at the best ask), else None: strategies skip proposing it instead of journaling refusals
        every cooldown. `submit` still checks everything itself."""
        book = self.books.get(spec.spot_symbol)
        price = book.best_ask if book is not None else None
        return self.margin_guard.refusal() or (
            inventory_refusal(self, spec.spot_symbol, spec.quantity, price) if price is not None else None
        )

    def request_close(
        self, package_id: str, reason: str = "operator", *, policy: str = "operator",
        detail: Mapping[str, str] | None = None,
    ) -> bool:  # fmt: skip
        """Close a hedged package: both closing legs as post-only limits priced from the books now (spot sell
        at the maker ask, perp buy at the maker bid), escalating into the kill switch on any trouble; without
        fresh books, straight to the kill switch's aggressive orders. `policy` names what asked (journaled as
        an `exit` row and on the event, with `detail`: the asker's numbers, if any). Returns False when the
        package is not hedged, already closing, or the engine is stopping. Raises KeyError for an unknown
        package id."""
        handle = self.handles.get(package_id)
        if handle is None and package_id in self.retired:
            return False  # flat, released from memory
        if handle is None:
            raise KeyError(f"no package {package_id!r}")
        if handle.core.state is not State.HEDGED or handle.exit_policy is not None or handle.done.is_set():
            return False
        if self.mode is EngineMode.STOPPING:
            return False
        now = trio.current_time()
        prices = self._exit_prices(handle, now)
        handle.exit_policy = policy
        self.stats.exits[policy] = self.stats.exits.get(policy, 0) + 1
        self.journal.record(
            "exit", package_id,
            {"policy": policy, "reason": reason, "passive": prices is not None,
             "spot_price": None if prices is None else str(prices[0]),
             "perp_price": None if prices is None else str(prices[1]),
             **({"detail": dict(detail)} if detail else {})},
            now,
        )  # fmt: skip
        log.info("package %s: close requested by %s (%s)", package_id, policy, reason)
        spot_price, perp_price = prices if prices is not None else (None, None)
        handle.post(CloseRequested(reason, policy, spot_price, perp_price))
        return True

    def _exit_prices(self, handle: PackageHandle, now: float) -> tuple[Decimal, Decimal] | None:
        plan = handle.core.plan
        spot_book, perp_book = self.books.get(plan.spot.symbol), self.books.get(plan.perp.symbol)
        if spot_book is None or perp_book is None:
            return None
        if max(now - spot_book.timestamp, now - perp_book.timestamp) > self.config.max_book_age:
            return None
        try:
            return (
                maker_sell_price(spot_book, self.markets[plan.spot.symbol].tick_size),
                maker_buy_price(perp_book, self.markets[plan.perp.symbol].tick_size),
            )
        except PricingRefused:
            return None

    # --- the engine's own state -----------------------------------------------------------------------

    def halt(self, reason: str, source: HaltSource = HaltSource.ENGINE) -> bool:
        """Stop taking new packages (unwinds continue). Returns False if the engine was not running -- except
        that an operator's halt always takes over a halt that might resume by itself (breaker cool-off)."""
        now = trio.current_time()
        if self.mode is EngineMode.HALTED and source is HaltSource.OPERATOR:
            self.halt_source, self.halt_reason, self.resume_at = source, reason, None
            self.journal.record("engine", None, {"event": "halted", "reason": reason, "source": source.value,
                                                 "already_halted": True}, now)  # fmt: skip
            notify(self.observers, "on_halt", reason, source)
            return True
        if self.mode is not EngineMode.RUNNING:
            return False
        self.mode = EngineMode.HALTED
        self.halt_reason = reason
        self.halt_source = source
        self.stats.halts += 1
        log.warning("engine HALTED: %s", reason)
        self.note_error(f"engine halted: {reason}")
        payload: dict[str, object] = {"event": "halted", "reason": reason, "source": source.value}
        b = self.config.breaker
        if source is HaltSource.BREAKER and b.resume_after is not None:
            again = self._auto_resumed_at is not None and now - self._auto_resumed_at <= b.window
            if again:
                payload["auto_resume"] = f"none: tripped again within {b.window:g}s of an automatic resume"
                log.warning("breaker tripped again after an automatic resume: halted until an operator resumes")
            else:
                self.resume_at = now + b.resume_after
                payload["auto_resume_in"] = b.resume_after
                self._resume_wake.set()
        self.journal.record("engine", None, payload, now)
        notify(self.observers, "on_halt", reason, source)
        return True

    def resume(self, reason: str = "operator", *, automatic: bool = False) -> bool:
        """Take new packages again. Returns False if the engine was not halted."""
        if self.mode is not EngineMode.HALTED:
            return False
        now = trio.current_time()
        self.mode = EngineMode.RUNNING
        self.halt_reason = ""
        self.halt_source = None
        self.resume_at = None
        self._auto_resumed_at = now if automatic else None
        if automatic:
            self.stats.auto_resumes += 1
        self._orphan_times.clear()
        log.warning("engine RESUMED: %s", reason)
        self.journal.record("engine", None, {"event": "resumed", "reason": reason, "automatic": automatic}, now)
        notify(self.observers, "on_resume", reason, automatic)
        return True

    async def _breaker_cooloff(self) -> None:
        """`breaker.resume_after`: resume a breaker halt once its cool-off has passed (unless an operator
        took the halt over meanwhile, which clears `resume_at`)."""
        while True:
            wake = self._resume_wake
            with trio.move_on_at(self.resume_at if self.resume_at is not None else math.inf):
                await wake.wait()
            if wake.is_set():
                self._resume_wake = trio.Event()
                continue
            if self.resume_at is not None and self.halt_source is HaltSource.BREAKER:
                waited = self.config.breaker.resume_after
                self.resume(f"circuit breaker cool-off of {waited:g}s passed", automatic=True)
            self.resume_at = None

    def note_error(self, text: str) -> None:
        self.stats.errors.append((trio.current_time(), time.time(), text))

    def note_reaction(self, seconds: float) -> None:
        """A kill switch engaged: `seconds` from the event that broke the package to its orders going out
        (decision, journal commit, release), measured on the wall clock."""
        if self.observers:
            notify(self.observers, "on_kill_switch", seconds)

    def note_naked(self, seconds: float) -> None:
        self.stats.note_naked(seconds)
        notify(self.observers, "on_naked", seconds)

    def _venue_health_changed(self, healthy: bool, detail: str) -> None:
        """The venue watch declared the venue down, or reconciled it back (it journals both)."""
        if not healthy:
            self.note_error(f"venue unreachable: {detail}")
        notify(self.observers, "on_venue_health", healthy, detail)

    def on_transition(self, handle: PackageHandle, t: Transitioned, now: float) -> None:
        if t.dest is State.HEDGED:
            handle.hedged_at = now
            self._learn_fee(handle.core)
        if t.dest in (State.FLAT, State.HEDGED):
            self.live.discard(handle.package_id)
        else:
            self.live.add(handle.package_id)
        self.deadman.poke()  # entries start or stop resting on a transition
        self.stats.recent.append((now, handle.package_id, t.source.value, t.trigger.value, t.dest.value))
        if self.observers:
            notify(self.observers, "on_transition", handle, t, now)
        if t.dest is State.ORPHANED:
            handle.ever_orphaned = True
            self.stats.orphan_events += 1
            exposure = handle.core.exposure()
            if exposure.unknown and any(o.status is OrderStatus.UNKNOWN for o in handle.core.orders.values()):
                detail = f"an order's outcome is unknown; exposure at least spot {exposure.spot} perp {exposure.perp}"
                notify(self.observers, "on_unknown_exposure", handle.package_id, detail)
            self._breaker(now)
        elif t.dest is State.UNWINDING and t.source is not State.UNWINDING:
            handle.unwinding_since = now
        elif t.source is State.UNWINDING and t.dest in (State.FLAT, State.HEDGED):
            self.stats.unwound += 1
            handle.unwinding_since = None
            if handle.exit_policy is not None and t.dest is State.FLAT:
                self.stats.closed += 1
        # A flat package's orders stay routable: an order that reaches the venue after the package gave up on
        # it must still be seen (`route` -> `_late_update`, through `retired` once released), never dropped.
        if t.dest is State.FLAT:
            # Its `pnl` row was journaled in the transaction of the step that made it flat (`PackageActor._step`).
            # What it leaves behind (its own fills net of fees) is the desk's dust; the dust it took over
            # is no longer its own.
            base = self._spot_base(handle)
            self.dust[base] = self.dust.get(base, Decimal(0)) + handle.core.held_spot()

    def _learn_fee(self, core: PackageCore) -> None:
        """Only positive evidence counts: a fee not reported yet (0) must not turn the gross-up off."""
        for o in core.leg_orders(LegRole.SPOT):
            if o.intent.purpose is Purpose.ENTRY and o.intent.side is Side.BUY and o.filled > 0 and o.fee_base > 0:
                rate = (o.fee_base / o.filled).quantize(Decimal("1e-6"), rounding=ROUND_CEILING)  # never below
                self.fee_seen[(o.intent.symbol, o.intent.ioc)] = rate

    def breaker_count(self, now: float) -> int:
        """Orphan events inside the breaker's window now."""
        return sum(1 for t in self._orphan_times if t >= now - self.config.breaker.window)

    def _breaker(self, now: float) -> None:
        b = self.config.breaker
        self._orphan_times.append(now)
        while self._orphan_times and self._orphan_times[0] < now - b.window:
            self._orphan_times.popleft()
        if len(self._orphan_times) > b.max_orphans:
            self.halt(f"circuit breaker: {len(self._orphan_times)} orphan events within {b.window:g}s",
                      HaltSource.BREAKER)  # fmt: skip

    def on_rate_limited(self, exc: RateLimited) -> None:
        self.paused_until = trio.current_time() + exc.retry_after
        self.journal.record("engine", None, {"event": "rate_limited", "retry_after": exc.retry_after},
                            trio.current_time())  # fmt: skip

    def on_margin(self, event: str, level: str, detail: str) -> None:
        """The margin guard's level changed, or it lost or regained sight of the perp account (`MarginGuard`):
        for the observers (alerts, metrics)."""
        if event == "blind":
            self.note_error(f"margin guard blind: {detail}")
        notify(self.observers, "on_margin", event, level, detail)

    def on_unwind_overdue(self, handle: PackageHandle) -> None:
        self.stats.unwind_overdue += 1
        log.critical("package %s still unwinding after the unwind deadline", handle.package_id)
        self.note_error(f"package {handle.package_id} still unwinding after the unwind deadline")
        notify(self.observers, "on_unwind_overdue", handle.package_id)
        self.journal.record("unwind_overdue", handle.package_id, {"state": handle.core.state.value},
                            trio.current_time())  # fmt: skip
        self.halt(f"unwind deadline exceeded on {handle.package_id}")

    def journal_error(self, package_id: str, client_order_id: str, where: str, error: object) -> None:
        self.note_error(f"{package_id} {client_order_id} {where}: {error}")
        self.journal.record("order_error", package_id,
                            {"client_order_id": client_order_id, "where": where, "error": str(error)},
                            trio.current_time())  # fmt: skip

    # --- the venue gateway: order stream -> package mailboxes -----------------------------------------

    async def _gateway(self) -> None:
        backoff = 0.05
        while True:
            try:
                updates = await self.venue.watch_orders()
            except StreamDisconnected as exc:
                self.stats.stream_drops += 1
                if not self.outage.down:  # one row per drop, not one per failed reconnect of an outage
                    self.journal.record("engine", None, {"event": "stream_drop", "error": str(exc)},
                                        trio.current_time())  # fmt: skip
                self.outage.suspect(exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                if self.outage.down:
                    continue  # the venue watch reconciles everything once the venue answers again
                self._reconcile_live()
                # Liquidations and ADL during the gap were on the lost stream too: ask for the positions.
                assert self._service is not None
                for symbol in {h.core.plan.perp.symbol for h in self.handles.values() if not h.done.is_set()}:
                    self._service.start_soon(self.reconcile_short, symbol)
                continue
            backoff = 0.05
            self.stream_last_message = trio.current_time()
            if len(updates) > 1:
                # Stable: the kill switch's updates are posted first, each package's in the venue's order.
                updates = sorted(updates, key=self._routine)
            for update in updates:
                self.route(update)

    def _routine(self, update: OrderUpdate) -> bool:
        handle = self._orders.get(update.client_order_id)
        return handle is None or not handle.is_urgent()

    def route(self, update: OrderUpdate) -> None:
        handle = self._orders.get(update.client_order_id)
        # A flat core's actor reads its mailbox no more (`_finished`), though `done` is set only once it has
        # wound down: an update in between (the trade report with the fee of a market unwind the order answer
        # already told filled) would be lost there.
        if handle is not None and (handle.done.is_set() or handle.core.state is State.FLAT):
            facts = handle.core.orders.get(update.client_order_id)
            known = (
                KnownOrder(handle.package_id, ZERO, False) if facts is None else KnownOrder.of(handle.package_id, facts)
            )
            self._late_update(known, update, handle)
        elif handle is not None:
            if CRASH_ARMED and (facts := handle.core.orders.get(update.client_order_id)) is not None:
                _crashpoints.stream_answered(facts.intent)
            handle.post(to_order_event(update))
        elif (retired := self.retired.order(update.client_order_id, trio.current_time())) is not None:
            self._late_update(retired, update)
        elif update.origin in (OrderOrigin.LIQUIDATION, OrderOrigin.ADL):
            self._attribute_reduction(update)

    def _late_update(self, known: KnownOrder, update: OrderUpdate, handle: PackageHandle | None = None) -> None:
        """An update for a finished package (`known`: what its core knew of the order; `handle`: the package,
        None once released from memory): harmless if it tells nothing new, a late fee if it tells only fees;
        otherwise an order lives or filled at the venue that the package no longer accounts for. Never ignored:
        journaled, the engine halts, and the order is cancelled and whatever it filled beyond the package's
        account is closed at market (`_settle_late`)."""
        package_id = known.package_id
        # A stale "open" of an order since closed or cancelled tells nothing new; an order the package
        # concluded rejected (never found) can never be open: that one landed late.
        if update.filled <= known.filled and not (known.rejected and not update.status.is_terminal):
            if update.filled == known.filled and (
                update.fee_base > known.fee_base or update.fee_quote > known.fee_quote
            ):
                self._late_fee(package_id, update, handle)
            return
        key = (update.symbol, update.client_order_id)
        if key in self._late_seen:
            return  # being settled already
        self._late_seen.add(key)
        log.critical("package %s: order %s %s at the venue after the package finished (filled %s, knew %s)",
                     package_id, update.client_order_id, update.status.value, update.filled, known.filled)  # fmt: skip
        self.journal.record(
            "engine", None,
            {"event": "late_order", "package": package_id, "client_order_id": update.client_order_id,
             "symbol": update.symbol, "status": update.status.value, "filled": str(update.filled),
             "known_filled": str(known.filled)},
            trio.current_time(),
        )  # fmt: skip
        self.halt(f"order {update.client_order_id} of finished package {package_id} live at the venue")
        assert self._service is not None
        self._service.start_soon(self._settle_late, package_id, update, known.filled)

    def _late_fee(self, package_id: str, update: OrderUpdate, handle: PackageHandle | None) -> None:
        """The fees of a finished package's order, reported after it finished (the trade report of a market
        unwind that the order answer had already told filled): journaled, applied, and the package's
        accounting journaled again (`audit verify` replays both). A package already released from memory is
        rebuilt from the journal for it (rare: its order's fees were reported only after its release)."""
        payload = {"client_order_id": update.client_order_id, "fee_base": str(update.fee_base),
                   "fee_quote": str(update.fee_quote)}  # fmt: skip
        now = trio.current_time()
        if handle is not None:
            core, funding = handle.core, handle.funding
        else:
            try:
                core = replay_package(self.journal, package_id)
            except ReplayMismatch as exc:
                log.error("late fee of %s: package %s does not replay: %s", update.client_order_id, package_id, exc)
                return
            funding = sum((funding_amount(r.payload) for r in self.journal.timeline(package_id) if r.kind == FUNDING),
                          ZERO)  # fmt: skip
        before = package_pnl(core, funding)
        with self.journal.batch():
            self.journal.record(LATE_FEE, package_id, payload, now)
            apply_late_fee(core, payload)
            after = package_pnl(core, funding)
            self.journal.record(PNL, package_id, after.to_dict(), now)
        if handle is None:
            self.retired.refee(update.client_order_id, before, after, core.orders[update.client_order_id])

    async def _settle_late(self, package_id: str, update: OrderUpdate, known: Decimal) -> None:
        self._settling += 1
        try:
            await self._settle_late_order(package_id, update, known)
        finally:
            self._settling -= 1

    async def _settle_late_order(self, package_id: str, update: OrderUpdate, known: Decimal) -> None:
        from ._recovery import unwind_stray

        cid, symbol = update.client_order_id, update.symbol
        final = update
        for attempt in range(5):
            try:
                with trio.fail_after(self.config.deadlines.ack):
                    if not final.status.is_terminal:
                        with contextlib.suppress(OrderNotFound):
                            await self.venue.cancel_order(symbol, cid)
                    final = await self.venue.fetch_order(symbol, cid)
            except (trio.TooSlowError, VenueError) as exc:
                log.warning("late order %s: %s (attempt %d)", cid, exc, attempt + 1)
                await trio.sleep(min(0.1 * 2**attempt, 2.0))
                continue
            if final.status.is_terminal:
                break
        extra = final.filled - known
        fee = final.fee_base if known == 0 else Decimal(0)
        outcome: dict[str, str] = {"filled": str(final.filled), "status": final.status.value}
        if extra > 0 and final.status.is_terminal:
            outcome.update(await unwind_stray(self, replace(final, filled=extra, fee_base=fee), None))
        self.journal.record("engine", None, {"event": "late_order_settled", "package": package_id,
                            "client_order_id": cid, **outcome}, trio.current_time())  # fmt: skip

    def _attribute_reduction(self, update: OrderUpdate) -> None:
        """The venue bought back part of the perp short by itself (liquidation / ADL). One accounting with the
        position check: what it already charged ahead of this report is not charged a second time."""
        key = (update.symbol, update.client_order_id)
        seen = self._liquidations.get(key, Decimal(0))
        delta = update.filled - seen
        if delta <= 0:
            return
        self._liquidations[key] = update.filled
        ahead = min(self._charged_ahead.get(update.symbol, Decimal(0)), delta)
        if ahead > 0:
            self._charged_ahead[update.symbol] -= ahead
        remaining = (
            self.charge_reduction(update.symbol, delta - ahead, update.origin.value) if delta > ahead else Decimal(0)
        )
        self.journal.record(
            "engine", None,
            {"event": "venue_reduction", "order": update.client_order_id, "symbol": update.symbol,
             "quantity": str(delta), "charged_already": str(ahead), "unattributed": str(remaining)},
            trio.current_time(),
        )  # fmt: skip

    def available_short(self, handle: PackageHandle) -> Decimal:
        """The perp short a package holds that nothing is already closing: reductions still in its mailbox
        are not in its core yet, and unwind buys in flight may have executed unreported. A lower bound, so
        charging against it can never take more than the package has."""
        core = handle.core
        in_mailbox = handle.reductions_posted - core.venue_reduced
        closing = sum(
            (
                o.intent.amount - o.filled
                for o in core.open_orders()
                if o.intent.symbol == core.plan.perp.symbol
                and o.intent.side is Side.BUY
                and o.intent.client_order_id in handle.released  # a retry waiting out its back-off cannot
            ),
            Decimal(0),
        )
        return max(-core.exposure().perp - in_mailbox - closing, Decimal(0))

    def charge_reduction(
        self, symbol: str, quantity: Decimal, origin: str, prefer: PackageHandle | None = None
    ) -> Decimal:
        """Charge a perp short the venue no longer shows to the packages that believe they hold it: `prefer`
        first, then newest first (arbitrary but deterministic; every unit lands somewhere it can). Returns
        what could not be attributed."""
        remaining = quantity
        candidates = sorted(
            (
                h for h in self.handles.values()
                if h.core.plan.perp.symbol == symbol and h.core.state not in (State.PENDING, State.FLAT)
            ),
            key=lambda h: (h is not prefer, -h.created_at),
        )  # fmt: skip
        for h in candidates:
            take = min(self.available_short(h), remaining)
            if take > 0:
                h.reductions_posted += take
                h.post(VenueReduction(take, origin))
                remaining -= take
            if remaining <= 0:
                break
        return remaining

    async def _position_reconciler(self) -> None:
        """Every `reconcile_interval`, compare the venue's perp positions with what the live packages
        believe: a liquidation whose update never arrived (lost stream, venue hiccup) still reaches its
        package. Then `reconcile_venue` compares positions and spot balances in both directions."""
        while True:
            await trio.sleep(self.config.reconcile_interval)
            symbols = {h.core.plan.perp.symbol for h in self.handles.values() if not h.done.is_set()}
            for symbol in sorted(symbols):
                await self.reconcile_short(symbol)
            await self.reconcile_venue()

    async def _funding_poller(self, venue: FundingVenue) -> None:
        """At once on a journal that never saw funding (the baseline), then every `funding_interval`: book
        the venue's new funding payments to the packages holding the short (see _funding.py)."""
        assert self.config.funding_interval is not None
        if not self.funding.started:
            await self.poll_funding(venue)
        while True:  # after a restart, the first poll comes once recovery has rebuilt the packages
            await trio.sleep(self.config.funding_interval)
            await self.poll_funding(venue)

    async def poll_funding(self, venue: FundingVenue) -> int:
        """One poll of the venue's funding payments; returns how many were booked (0 when it did not answer)."""
        try:
            payments = await venue.fetch_funding(self.funding.last_ms)
        except VenueError as exc:
            log.warning("funding: the venue did not list its payments: %s", exc)
            return 0
        now = trio.current_time()
        if not self.funding.started:
            self.funding.baseline(payments, now)
            return 0
        return self.funding.book(payments, self.handles.values(), now)

    async def reconcile_short(self, symbol: str, prefer: PackageHandle | None = None) -> None:
        """A reduce-only unwind was refused: the venue's short is smaller than the packages believe (reduced
        while we were not looking). Ask the venue and charge the difference."""
        # What each package believed before the request, to compare with its belief after: a short that fills
        # while the positions are fetched (an IOC hedge answers within a round trip) may be missing from the
        # venue's answer though it is real. Only what was believed on both sides of the request is compared.
        before = {
            h.package_id: self.available_short(h) for h in self.handles.values() if h.core.plan.perp.symbol == symbol
        }
        try:
            with trio.fail_after(self.config.deadlines.ack):
                positions = await self.venue.fetch_positions()
        except (trio.TooSlowError, VenueError) as exc:
            self.outage.suspect(exc)
            if not self.outage.down:
                log.warning("position reconcile %s failed: %s", symbol, exc)
            return
        venue_short = max(-positions.get(symbol, Decimal(0)), Decimal(0))
        believed = sum(
            (
                min(self.available_short(h), before.get(h.package_id, Decimal(0)))
                for h in self.handles.values()
                if h.core.plan.perp.symbol == symbol
            ),
            Decimal(0),
        )
        missing = believed - venue_short
        if missing <= 0:
            return
        remaining = self.charge_reduction(symbol, missing, "found by position reconcile", prefer)
        # The stream may still report the reduction behind this: remember that it is paid for.
        self._charged_ahead[symbol] = self._charged_ahead.get(symbol, Decimal(0)) + missing - remaining
        self.journal.record(
            "engine", None,
            {"event": "position_reconcile", "symbol": symbol, "venue_short": str(venue_short),
             "believed_short": str(believed), "charged": str(missing - remaining)},
            trio.current_time(),
        )  # fmt: skip

    # --- venue truth in both directions ---------------------------------------------------------------

    def _spot_base(self, handle: PackageHandle) -> str:
        return self._base_of(handle.core.plan.spot.symbol)

    def _base_of(self, spot_symbol: str) -> str:
        market = self.markets.get(spot_symbol)
        return market.base if market is not None else spot_symbol.split("/")[0]

    async def take_baseline(self, truth: Mapping[str, tuple[Decimal, Decimal]] | None = None) -> None:
        """Record what the account holds at the venue beyond what the packages hold: the venue's balances and
        positions minus each package's (spot, perp) exposure (`truth` overrides a package's, for recovered
        packages whose cores have not yet been told what the venue answered). Journaled."""

        async def read() -> tuple[Mapping[str, Balance], Mapping[str, Decimal]]:
            with trio.fail_after(self.config.deadlines.ack * 2):
                return await self.venue.fetch_balance(), await self.venue.fetch_positions()

        try:
            # Taken right after a recovery, whose queries may have spent the request budget: waited out.
            balances, positions = await waiting_out_rate_limits(read, "the venue baseline")
        except (trio.TooSlowError, VenueError) as exc:
            log.warning("venue baseline unavailable: %s; spot balances go unreconciled", exc)
            self.journal.record("engine", None, {"event": "venue_baseline_unavailable", "error": str(exc)},
                                trio.current_time())  # fmt: skip
            self.baseline = None
            return
        spot = {asset: b.total for asset, b in balances.items()}
        perp = {symbol: qty for symbol, qty in positions.items()}
        for h in self.handles.values():
            exp = h.core.exposure()
            held_spot, held_perp = (truth or {}).get(h.package_id, (exp.spot, exp.perp))
            base, symbol = self._spot_base(h), h.core.plan.perp.symbol
            spot[base] = spot.get(base, Decimal(0)) - held_spot
            perp[symbol] = perp.get(symbol, Decimal(0)) - held_perp
        self.baseline = VenueBaseline(spot, perp)
        self._suspect.clear()
        self.journal.record("engine", None, {"event": "venue_baseline", **self.baseline.to_dict(),
                            "packages": sorted(self.handles)}, trio.current_time())  # fmt: skip

    def _settled(self, handles: list[PackageHandle]) -> bool:
        """Nothing in flight for these packages: their beliefs are final until the venue acts by itself."""
        for h in handles:
            core = h.core
            if core.open_orders() or core.exposure().unknown or h.reductions_posted != core.venue_reduced:
                return False
            if not h.done.is_set() and core.state not in (State.HEDGED, State.FLAT):
                return False
        return True

    async def reconcile_venue(self) -> None:
        """Compare the venue's perp positions and spot balances (net of the baseline) with the sum of the
        packages' beliefs, per symbol / asset whose packages are all settled. A mismatch seen twice in a row
        (once may be a report still on the way) is acted on: exposure the packages do not account for is
        closed at market under the kill switch (the engine halts), missing spot halts the engine; every
        finding is journaled. A short the venue no longer shows is charged by `reconcile_short`."""
        baseline = self.baseline
        if baseline is None or self._venue_in_motion():
            return
        by_perp: dict[str, list[PackageHandle]] = {s: [] for s in self.retired.perp}
        by_base: dict[str, list[PackageHandle]] = {}
        spot_symbols: dict[str, str] = {}  # base -> a spot symbol trading it
        for symbol in self.retired.spot:
            spot_symbols[self._base_of(symbol)] = symbol
            by_base.setdefault(self._base_of(symbol), [])
        for h in self.handles.values():
            by_perp.setdefault(h.core.plan.perp.symbol, []).append(h)
            by_base.setdefault(self._spot_base(h), []).append(h)
            spot_symbols[self._spot_base(h)] = h.core.plan.spot.symbol
        perps = [s for s, hs in by_perp.items() if self._settled(hs)]
        bases = [b for b, hs in by_base.items() if self._settled(hs)]
        if not perps and not bases:
            return
        try:
            with trio.fail_after(self.config.deadlines.ack * 2):
                balances = await self.venue.fetch_balance()
                positions = await self.venue.fetch_positions()
        except (trio.TooSlowError, VenueError) as exc:
            log.warning("venue reconcile failed: %s", exc)
            return
        if self._venue_in_motion():  # it may have changed while we awaited the venue
            return
        for symbol in sorted(perps):
            if not self._settled(by_perp[symbol]):
                continue
            believed = sum((h.core.exposure().perp for h in by_perp[symbol]), self.retired.perp.get(symbol, Decimal(0)))
            expected = baseline.perp.get(symbol, Decimal(0)) + believed
            diff = positions.get(symbol, Decimal(0)) - expected
            if self._confirmed(("perp", symbol), diff):
                await self._on_mismatch("perp", symbol, diff, expected, positions.get(symbol, Decimal(0)))
        for base in sorted(bases):
            if not self._settled(by_base[base]):
                continue
            retired = sum((q for s, q in self.retired.spot.items() if self._base_of(s) == base), Decimal(0))
            believed = sum((h.core.exposure().spot for h in by_base[base]), retired)
            expected = baseline.spot.get(base, Decimal(0)) + believed
            held = balances[base].total if base in balances else Decimal(0)
            diff = held - expected
            spot_symbol = spot_symbols[base]
            if abs(diff) < self._spot_dust(spot_symbol):
                diff = Decimal(0)  # fee rounding: below what the venue would trade
            if self._confirmed(("spot", base), diff):
                await self._on_mismatch("spot", spot_symbol, diff, expected, held)

    async def venue_check(self) -> list[str]:
        """After shutdown: the venue's positions, balances and open orders (through the venue's own REST
        answers) against the baseline plus every package's belief, at once and in both directions. Each
        disagreement is one line (journaled too); none means the venue agrees."""
        problems = [f"package {h.package_id} ended {h.core.state.value}" for h in self.handles.values()
                    if h.core.state not in (State.HEDGED, State.FLAT) or h.core.exposure().unknown]  # fmt: skip
        baseline = self.baseline
        if baseline is None:
            return [*problems, "no venue baseline was recorded: balances and positions unchecked"]
        symbols = sorted({s for h in self.handles.values() for s in (h.core.plan.spot.symbol, h.core.plan.perp.symbol)}
                         | set(self.retired.spot) | set(self.retired.perp))  # fmt: skip
        for attempt in range(4):
            try:
                with trio.fail_after(self.config.deadlines.ack * 3):
                    balances = await self.venue.fetch_balance()
                    positions = await self.venue.fetch_positions()
                    open_orders = [o for s in symbols for o in await self.venue.fetch_open_orders(s)]
                break
            except RateLimited as exc:  # a busy account at exit: wait as told, then ask again
                if attempt == 3:
                    return [*problems, f"the venue could not be asked: {exc}"]
                await trio.sleep(min(max(exc.retry_after, 0.5), 10.0))
            except (trio.TooSlowError, VenueError) as exc:
                return [*problems, f"the venue could not be asked: {exc}"]
        perp: dict[str, Decimal] = dict(baseline.perp)
        spot: dict[str, Decimal] = {}
        spot_symbol: dict[str, str] = {}
        for symbol, held_perp in self.retired.perp.items():  # dust left by released flat packages
            perp[symbol] = perp.get(symbol, Decimal(0)) + held_perp
        for symbol, held_spot in self.retired.spot.items():
            base = self._base_of(symbol)
            spot[base] = spot.get(base, baseline.spot.get(base, Decimal(0))) + held_spot
            spot_symbol[base] = symbol
        for h in self.handles.values():
            exp = h.core.exposure()
            symbol, base = h.core.plan.perp.symbol, self._spot_base(h)
            perp[symbol] = perp.get(symbol, Decimal(0)) + exp.perp
            spot[base] = spot.get(base, baseline.spot.get(base, Decimal(0))) + exp.spot
            spot_symbol[base] = h.core.plan.spot.symbol
        for symbol in sorted(set(perp) | {s for s, q in positions.items() if q != 0}):
            held, expected = positions.get(symbol, Decimal(0)), perp.get(symbol, Decimal(0))
            if held != expected:
                problems.append(f"position {symbol}: venue {held}, journal accounts for {expected}")
        for base in sorted(spot):
            held = balances[base].total if base in balances else Decimal(0)
            if abs(held - spot[base]) >= self._spot_dust(spot_symbol[base]):
                problems.append(f"balance {base}: venue {held}, journal accounts for {spot[base]}")
        prefix = f"lg{self.journal.journal_id}"
        for order in open_orders:
            if order.client_order_id.startswith(prefix):
                problems.append(f"order {order.client_order_id} still open at the venue")
        self.journal.record("engine", None, {"event": "venue_check", "ok": not problems, "problems": problems},
                            trio.current_time())  # fmt: skip
        return problems

    def _venue_in_motion(self) -> bool:
        return self._settling > 0

    def _confirmed(self, key: tuple[str, str], diff: Decimal) -> bool:
        if diff == 0:
            self._suspect.pop(key, None)
            return False
        seen = self._suspect.get(key)
        self._suspect[key] = diff
        return seen == diff

    def _spot_dust(self, symbol: str) -> Decimal:
        market = self.markets[symbol]
        book = self.books.get(symbol)
        price = book.best_bid if book is not None else None
        return dust_threshold(market, price) if price else market.step_size

    async def _on_mismatch(self, kind: str, symbol: str, diff: Decimal, expected: Decimal, held: Decimal) -> None:
        self.stats.venue_mismatches += 1
        self._suspect.pop((kind, symbol if kind == "perp" else self.markets[symbol].base), None)
        surplus = diff < 0 if kind == "perp" else diff > 0  # more exposure at the venue than believed
        payload: dict[str, object] = {"event": "venue_mismatch", "kind": kind, "symbol": symbol, "venue": str(held),
                                      "expected": str(expected), "difference": str(diff)}  # fmt: skip
        log.critical("venue %s %s holds %s, the packages account for %s", kind, symbol, held, expected)
        if not surplus:
            self.journal.record("engine", None, {**payload, "action": "halt"}, trio.current_time())
            self.halt(f"venue {kind} {symbol} holds {held}, less than the packages believe ({expected})")
            return
        self.halt(f"venue {kind} {symbol} holds {held}, more than the packages account for ({expected})")
        market = self.markets[symbol]
        qty = (abs(diff) / market.step_size).to_integral_value(rounding=ROUND_DOWN) * market.step_size
        if qty <= 0 or qty < market.min_qty or (kind == "spot" and qty < self._spot_dust(symbol)):
            self.journal.record("engine", None, {**payload, "action": "below tradable size"}, trio.current_time())
            return
        self._surplus_seq += 1
        # Never a package's id: `R`, a random component and a counter (unique across the journal's life).
        cid = f"lg{self.journal.journal_id}R{secrets.token_hex(4)}-{self._surplus_seq}"
        side = Side.BUY if kind == "perp" else Side.SELL
        request = OrderRequest(cid, symbol, side, OrderType.MARKET, qty, reduce_only=kind == "perp")
        self.journal.record("engine", None, {**payload, "action": "close", "client_order_id": cid,
                            "side": side.value, "amount": str(qty)}, trio.current_time())  # fmt: skip
        self._settling += 1
        try:
            with trio.fail_after(self.config.deadlines.ack):
                ack = await self.venue.fire(self.venue.arm(request))
            outcome = {"status": ack.status.value, "filled": str(ack.filled)}
        except (OrderRejected, trio.TooSlowError, VenueError) as exc:
            outcome = {"status": f"failed: {exc}"}
        finally:
            self._settling -= 1
        self.journal.record("engine", None, {"event": "venue_mismatch_closed", "client_order_id": cid, **outcome},
                            trio.current_time())  # fmt: skip

    def _reconcile_live(self) -> None:
        """After a stream drop, ask the venue for every order still live in some package."""
        assert self._service is not None
        for handle in self.handles.values():
            if handle.done.is_set():
                continue
            for facts in handle.core.open_orders():
                self._service.start_soon(self._reconcile_order, handle, facts.intent.client_order_id,
                                         facts.intent.symbol)  # fmt: skip

    async def _reconcile_order(self, handle: PackageHandle, client_order_id: str, symbol: str) -> None:
        try:
            with trio.fail_after(self.config.deadlines.ack):
                update = await self.venue.fetch_order(symbol, client_order_id)
        except (trio.TooSlowError, VenueError) as exc:
            self.outage.suspect(exc)
            if not self.outage.down:
                log.warning("reconcile %s failed: %s", client_order_id, exc)
            return
        handle.post(to_order_event(update))

    # --- reporting ------------------------------------------------------------------------------------

    def needs_recovery(self) -> dict[str, str]:
        """Packages that are not flat, or hedged with nothing in flight, or whose exposure is unknown: what
        `legguard recover` (or the next `run`) must finish, with the state each is in."""
        out: dict[str, str] = {}
        for pid, h in sorted(self.handles.items()):
            core = h.core
            if core.state is State.PENDING and h.done.is_set():
                continue  # never dispatched: nothing was sent
            safe = core.state is State.FLAT or (core.state is State.HEDGED and core.is_quiescent())
            if not safe or core.exposure().unknown:
                out[pid] = core.state.value + (" (exposure unknown)" if core.exposure().unknown else "")
        return out

    def final_states(self) -> Counter[str]:
        states = Counter(h.core.state.value for h in self.handles.values())
        if len(self.retired):
            states[State.FLAT.value] += len(self.retired)
        return states

    def kill_switch_prepared(self) -> dict[str, int]:
        """How often the kill switch found its next move ready, since start: `cancel_on_answer`, cancels the
        venue wrote as it read the answer they waited for (absent for a venue that cannot); `unwind_armed_ahead`,
        unwinds released as armed while the cancels travelled; `unwind_rearmed`, armed ahead but changed by the
        cancels' answers; `step_ahead`, steps taken as decided and encoded ahead of their event."""
        out: dict[str, int] = {}
        written = getattr(self.venue, "cancels_on_answer", None)
        if isinstance(written, int):
            out["cancel_on_answer"] = written
        out["unwind_armed_ahead"] = self.stats.armed_ahead
        out["unwind_rearmed"] = self.stats.rearmed
        out["step_ahead"] = self.stats.prepared_steps
        return out
