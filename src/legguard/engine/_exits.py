"""From entry to exit: the exit policy that decides when a hedged package is closed, the margin guard that
watches the perp account's distance to liquidation, and the inventory and balance limits checked before every
entry.

The close itself is the decision core's (a passive two-leg exit escalating into the kill switch); this module
only decides *when*, through `ExitHost.request_close`, naming the policy that asked (journaled, shown by
`legguard audit show`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Protocol

import trio

from legguard.adapters._venue import Venue
from legguard.domain import Balance, BookSnapshot, MarginAccount, Market, MarketKind, VenueError
from legguard.fsm import LegRole, PackageCore, Purpose, State

from ._handle import PackageHandle
from ._outage import waiting_out_rate_limits
from ._spec import EngineConfig
from .journal import Journal

log = logging.getLogger("legguard.engine")

ZERO = Decimal(0)

# The names a close is journaled under (`exit` rows, `CloseRequested.policy`).
POLICIES = ("basis", "max_hold", "loss_limit", "margin_guard", "operator", "signal")  # signal: the strategy


class ExitHost(Protocol):
    """What the exit policy, the margin guard and the entry checks use of the engine."""

    venue: Venue
    journal: Journal
    config: EngineConfig
    markets: Mapping[str, Market]
    books: dict[str, BookSnapshot]
    handles: dict[str, PackageHandle]

    def request_close(self, package_id: str, reason: str = "operator", *, policy: str = "operator") -> bool: ...

    def on_margin(self, event: str, level: str, detail: str) -> None: ...


def premium(spot: BookSnapshot, perp: BookSnapshot) -> Decimal | None:
    """Perp mid over spot mid, minus one: positive when the perp trades rich."""
    if None in (spot.best_bid, spot.best_ask, perp.best_bid, perp.best_ask):
        return None
    assert spot.best_bid is not None and spot.best_ask is not None
    assert perp.best_bid is not None and perp.best_ask is not None
    return (perp.best_bid + perp.best_ask) / (spot.best_bid + spot.best_ask) - 1


def mark_to_market(core: PackageCore, spot: BookSnapshot, perp: BookSnapshot) -> Decimal | None:
    """What closing the package now would realise against its entry, in quote: spot held sold at the bid,
    the short bought back at the ask, fees paid so far included. None without both sides of both books."""
    if spot.best_bid is None or perp.best_ask is None:
        return None
    pnl = ZERO
    for o in core.orders.values():
        if o.intent.purpose is not Purpose.ENTRY or o.filled == 0:
            continue
        price = o.average if o.average is not None else o.intent.price
        if price is None:
            return None
        if o.intent.role is LegRole.SPOT:
            pnl += (o.filled - o.fee_base) * spot.best_bid - o.filled * price
        else:
            pnl += o.filled * (price - perp.best_ask)
        pnl -= o.fee_quote
    return pnl


@dataclass(slots=True)
class ExitPolicy:
    """Decides, for each hedged package, whether one of the configured exit policies fires."""

    host: ExitHost

    def decide(self, handle: PackageHandle, now: float) -> tuple[str, str] | None:
        """(policy, reason) for a hedged package that should be closed now, else None. The loss limit
        first, then the holding time, then the basis."""
        cfg = self.host.config.exit
        core = handle.core
        if core.state is not State.HEDGED or handle.exit_policy is not None or handle.done.is_set():
            return None
        spot = self.host.books.get(core.plan.spot.symbol)
        perp = self.host.books.get(core.plan.perp.symbol)
        if cfg.loss_limit is not None and spot is not None and perp is not None:
            pnl = mark_to_market(core, spot, perp)
            if pnl is not None and pnl < -cfg.loss_limit:
                return "loss_limit", f"mark-to-market {pnl:.4f} beyond loss limit -{cfg.loss_limit}"
        held = now - (handle.hedged_at if handle.hedged_at is not None else now)
        if cfg.max_hold is not None and held >= cfg.max_hold:
            return "max_hold", f"hedged {held:.1f}s (max_hold {cfg.max_hold:g}s)"
        if cfg.basis_below is not None and spot is not None and perp is not None and held >= cfg.min_hold:
            p = premium(spot, perp)
            if p is not None and p < cfg.basis_below:
                return "basis", f"perp premium {p:.6f} below {cfg.basis_below}"
        return None

    async def run(self) -> None:
        cfg = self.host.config.exit
        while True:
            await trio.sleep(cfg.interval)
            now = trio.current_time()
            for handle in sorted(self.host.handles.values(), key=lambda h: h.created_at):
                decision = self.decide(handle, now)
                if decision is not None:
                    self.host.request_close(handle.package_id, decision[1], policy=decision[0])


class MarginGuard:
    """Reads the perp account's margin figures from the venue every `risk.margin_interval` seconds.

    Below `risk.margin_warn` it logs and journals (once per crossing); below `risk.margin_act` it stops new
    entries and closes hedged packages one at a time, oldest first, until the headroom is back at or above
    `margin_act`; then entries resume (journaled). A read that fails leaves the guard blind: the first failure
    of a streak and the first read after it are journaled (`margin_read`: `blind` / `seeing`, how long and
    how many), and `status` shows the streak, so an operator sees a guard that has not read the account."""

    def __init__(self, host: ExitHost) -> None:
        self.host = host
        self.level = "ok"  # ok | warn | act
        self.last: MarginAccount | None = None
        self.last_at = float("-inf")  # when `last` was read
        self.collateral = Collateral(host)
        self.failures = 0  # reads failed in a row (the guard is blind while > 0)
        self.blind_since: float | None = None
        self.last_error = ""

    @property
    def acting(self) -> bool:
        return self.level == "act"

    def refusal(self) -> str | None:
        if not self.acting:
            return None
        headroom = self.last.headroom if self.last is not None else ZERO
        return f"margin guard: headroom {headroom:.4f} below act level {self.host.config.risk.margin_act}"

    async def run(self) -> None:
        while True:
            await self.check()
            await trio.sleep(self.host.config.risk.margin_interval)

    async def check(self) -> None:
        risk = self.host.config.risk

        async def read() -> MarginAccount:
            with trio.fail_after(self.host.config.deadlines.ack):
                return await self.host.venue.fetch_margin()

        try:
            # A refusal by the request budget (a restart's recovery spends it) is waited out, up to one interval.
            account = await waiting_out_rate_limits(read, "margin guard", limit=risk.margin_interval)
        except (trio.TooSlowError, VenueError) as exc:
            self._failed(exc)
            return
        if self.failures:
            self._seeing()
        self.last, self.last_at = account, trio.current_time()
        headroom = account.headroom
        level = "act" if headroom < risk.margin_act else "warn" if headroom < risk.margin_warn else "ok"
        if level != self.level:
            previous, self.level = self.level, level
            log_at = {"ok": logging.INFO, "warn": logging.WARNING, "act": logging.CRITICAL}[level]
            log.log(log_at, "margin guard: headroom %.4f, level %s (was %s)", headroom, level, previous)
            self.host.on_margin("level", level, f"headroom {headroom:.4f} (was {previous}; warn below "
                                f"{risk.margin_warn}, act below {risk.margin_act})")  # fmt: skip
            self.host.journal.record(
                "margin", None,
                {"event": "level", "level": level, "previous": previous, "headroom": str(headroom),
                 "margin_balance": str(account.margin_balance), "maint_margin": str(account.maint_margin),
                 "warn": str(risk.margin_warn), "act": str(risk.margin_act)},
                trio.current_time(),
            )  # fmt: skip
        if level == "act":
            self._close_oldest(headroom)
        if risk.collateral and trio.current_time() >= self.collateral.next_at:
            self.collateral.next_at = trio.current_time() + risk.collateral_interval
            await self.collateral.rebalance(account)

    def _failed(self, exc: BaseException) -> None:
        now = trio.current_time()
        self.failures += 1
        # Venue errors carry no credentials (the adapters scrub them); a deadline has no text of its own.
        error = str(exc) or f"no answer within {self.host.config.deadlines.ack:g} s"
        # Logged on the 1st, 2nd, 4th, 8th ... failure of a streak, and whenever the error changes: a venue down
        # for a day at one read every 30 s writes ~12 lines, not ~2,900; `status` and the metrics show every one.
        if error != self.last_error or self.failures & (self.failures - 1) == 0:
            log.warning("margin guard: reading the perp account failed (%d in a row): %s", self.failures, error)
        self.last_error = error
        if self.failures == 1:
            self.blind_since = now
            read = None if self.last is None else round(now - self.last_at, 3)
            self.host.journal.record("margin_read", None, {"event": "blind", "error": self.last_error[:500],
                                                           "last_read_s": read, "level": self.level}, now)  # fmt: skip
            self.host.on_margin("blind", self.level, f"reading the perp account failed: {self.last_error}")

    def _seeing(self) -> None:
        now = trio.current_time()
        blind = 0.0 if self.blind_since is None else round(now - self.blind_since, 3)
        log.info("margin guard: reading the perp account again after %d failed read(s), %.1f s", self.failures, blind)
        self.host.journal.record("margin_read", None, {"event": "seeing", "failures": self.failures,
                                                       "blind_s": blind}, now)  # fmt: skip
        self.host.on_margin("seeing", self.level, f"reading the perp account again after {self.failures} failed "
                            f"read(s), {blind:g} s")  # fmt: skip
        self.failures, self.blind_since, self.last_error = 0, None, ""

    def status(self, now: float) -> dict[str, object]:
        """What `legguard status` shows of the guard: its level, the last headroom read and how old it is, and
        a streak of failed reads (the guard is blind while it lasts)."""
        return {
            "level": self.level,
            "headroom": None if self.last is None else str(self.last.headroom),
            "read_age_s": None if self.last is None else round(now - self.last_at, 3),
            "failures": self.failures,
            "blind_s": None if self.blind_since is None else round(now - self.blind_since, 3),
            "last_error": self.last_error if self.failures else "",
        }

    def _close_oldest(self, headroom: Decimal) -> None:
        handles = self.host.handles.values()
        if any(h.exit_policy == "margin_guard" and not h.done.is_set() for h in handles):
            return  # one close at a time: read the venue again once it is done
        for h in sorted(handles, key=lambda h: h.created_at):
            if h.core.state is State.HEDGED and h.exit_policy is None and not h.done.is_set():
                reason = f"headroom {headroom:.4f} below act level {self.host.config.risk.margin_act}"
                if self.host.request_close(h.package_id, reason, policy="margin_guard"):
                    return


class Collateral:
    """Quote between the spot account and the USDⓈ-M wallet (`[risk] collateral`), bounded per rolling hour,
    every move (and every failed one) journaled as a `collateral` row."""

    def __init__(self, host: ExitHost) -> None:
        self.host = host
        self.moves: list[tuple[float, Decimal]] = []  # (when, amount) within the last hour
        self.next_at = float("-inf")

    def budget_left(self, now: float) -> Decimal:
        self.moves = [(t, a) for t, a in self.moves if t > now - 3600]
        return self.host.config.risk.collateral_max_per_hour - sum((a for _, a in self.moves), ZERO)

    def plan(self, account: MarginAccount, spot_free: Decimal, now: float) -> tuple[bool, Decimal, str] | None:
        """(to_perp, amount, why) for the move the figures call for, else None."""
        risk = self.host.config.risk
        m, a, t = account.margin_balance, account.available, risk.collateral_target
        if m <= 0:
            return None
        ratio = a / m
        budget = self.budget_left(now)
        if ratio < t - risk.collateral_band:
            # (a + x) / (m + x) = t
            amount = min((t * m - a) / (1 - t), spot_free - risk.spot_reserve, budget)
            why = f"perp available {ratio:.4f} of margin balance, below target {t} - band {risk.collateral_band}"
            to_perp = True
        elif spot_free < risk.spot_reserve and ratio > t:
            # (a - x) / (m - x) = t
            amount = min((a - t * m) / (1 - t), risk.spot_reserve - spot_free, budget)
            why = (
                f"spot free {spot_free:.2f} below reserve {risk.spot_reserve}; perp available {ratio:.4f} above target"
            )
            to_perp = False
        else:
            return None
        amount = amount.quantize(Decimal("0.01"), rounding=ROUND_DOWN)
        if amount < risk.collateral_min:
            return None
        return to_perp, amount, why

    async def rebalance(self, account: MarginAccount) -> None:
        host = self.host
        asset = next((m.quote for m in host.markets.values() if m.kind is MarketKind.LINEAR), "USDT")
        now = trio.current_time()
        try:
            with trio.fail_after(host.config.deadlines.ack):
                balances = await host.venue.fetch_balance()
        except (trio.TooSlowError, VenueError) as exc:
            log.warning("collateral: reading the spot balance failed: %s", exc)
            return
        spot_free = balances.get(asset, Balance(ZERO)).free
        move = self.plan(account, spot_free, now)
        if move is None:
            return
        to_perp, amount, why = move
        row = {"asset": asset, "amount": str(amount), "from": "spot" if to_perp else "perp",
               "to": "perp" if to_perp else "spot", "reason": why}  # fmt: skip
        self.moves.append((now, amount))  # counted even if refused or unknown: the bound is conservative
        try:
            with trio.fail_after(host.config.deadlines.ack):
                await host.venue.transfer(asset, amount, to_perp=to_perp)
        except (trio.TooSlowError, VenueError) as exc:
            log.warning("collateral: transfer of %s %s failed: %s", amount, asset, exc)
            host.journal.record("collateral", None, {"event": "failed", **row, "error": str(exc) or "timeout"},
                                trio.current_time())  # fmt: skip
            return
        log.info("collateral: moved %s %s %s -> %s (%s)", amount, asset, row["from"], row["to"], why)
        host.journal.record("collateral", None, {"event": "moved", **row}, trio.current_time())


# --- limits before every entry ------------------------------------------------------------------------


def open_notional(handles: Mapping[str, PackageHandle], spot_symbol: str | None = None) -> Decimal:
    """Spot notional (at entry prices) of every package not flat, on one pair or all."""
    total = ZERO
    for h in handles.values():
        core = h.core
        if core.state is State.FLAT or (spot_symbol is not None and core.plan.spot.symbol != spot_symbol):
            continue
        if core.state is State.PENDING:
            total += core.plan.quantity * core.plan.spot.price
        else:
            total += max(core.exposure().spot, core.plan.quantity) * core.plan.spot.price
    return total


def inventory_refusal(
    host: ExitHost, spot_symbol: str, quantity: Decimal, price: Decimal, *, exclude: str | None = None
) -> str | None:
    """The per-pair and total notional caps and the per-pair package cap (`[risk]`)."""
    risk = host.config.risk
    if risk.max_pair_packages is None and risk.max_pair_notional is None and risk.max_total_notional is None:
        return None  # no cap set: no walk over every package held (it was one per new package)
    handles = {k: h for k, h in host.handles.items() if k != exclude}
    new = quantity * price
    if risk.max_pair_packages is not None:
        n = sum(
            1 for h in handles.values() if h.core.plan.spot.symbol == spot_symbol and h.core.state is not State.FLAT
        )
        if n >= risk.max_pair_packages:
            return f"risk: {n} open packages on {spot_symbol} (max_pair_packages {risk.max_pair_packages})"
    if risk.max_pair_notional is not None:
        pair = open_notional(handles, spot_symbol)
        if pair + new > risk.max_pair_notional:
            return (f"risk: {spot_symbol} notional {pair:.2f} + {new:.2f} above max_pair_notional "
                    f"{risk.max_pair_notional}")  # fmt: skip
    if risk.max_total_notional is not None:
        total = open_notional(handles)
        if total + new > risk.max_total_notional:
            return f"risk: total notional {total:.2f} + {new:.2f} above max_total_notional {risk.max_total_notional}"
    return None


@dataclass(slots=True)
class _Snapshot:
    taken_at: float
    balances: Mapping[str, Balance]
    margin: MarginAccount


class BalanceCheck:
    """Before every entry: the spot quote the buy needs and the perp margin the new short needs at the
    configured leverage plus a buffer, against the venue's own balances.

    A snapshot is reused for `risk.balance_max_age` seconds; what packages checked since the snapshot was
    taken (plus an acknowledgement deadline of slack) have reserved is subtracted, so two entries never both
    count the same money."""

    def __init__(self, host: ExitHost, guard: MarginGuard | None = None) -> None:
        self.host = host
        self.guard = guard  # its reading of the perp account is reused while fresh
        self._snapshot: _Snapshot | None = None
        self._reserved: list[tuple[float, Decimal, Decimal]] = []  # (when, quote, margin)
        self._lock = trio.Lock()

    def answerable(self) -> bool:
        """Whether `refusal_now` can answer without the venue: the snapshot is fresh and no check holds it."""
        snap = self._snapshot
        return (
            snap is not None
            and not self._lock.locked()
            and trio.current_time() - snap.taken_at <= self.host.config.risk.balance_max_age
        )

    async def refusal(self, core: PackageCore) -> str | None:
        async with self._lock:
            now = trio.current_time()
            snap = self._snapshot
            risk = self.host.config.risk
            if snap is None or now - snap.taken_at > risk.balance_max_age:
                guard = self.guard
                try:
                    with trio.fail_after(self.host.config.deadlines.ack):
                        balances = await self.host.venue.fetch_balance()
                        if guard is not None and guard.last is not None and now - guard.last_at <= risk.balance_max_age:
                            margin = guard.last
                        else:
                            margin = await self.host.venue.fetch_margin()
                except (trio.TooSlowError, VenueError) as exc:
                    return f"risk: balances unavailable ({exc or type(exc).__name__})"
                snap = self._snapshot = _Snapshot(now, balances, margin)
            return self._check(core, snap, now)

    def refusal_now(self, core: PackageCore) -> str | None:
        """`refusal` answered from the snapshot, synchronously: only when `answerable()`."""
        snap = self._snapshot
        assert snap is not None and self.answerable(), "refusal_now needs a fresh snapshot and no check running"
        return self._check(core, snap, trio.current_time())

    def _check(self, core: PackageCore, snap: _Snapshot, now: float) -> str | None:
        risk = self.host.config.risk
        plan = core.plan
        spot_market = self.host.markets[plan.spot.symbol]
        quote_needed = plan.quantity * plan.spot.price
        margin_needed = plan.quantity * plan.perp.price / risk.leverage * (1 + risk.margin_buffer)
        slack = self.host.config.deadlines.ack
        self._reserved = [r for r in self._reserved if r[0] >= snap.taken_at - slack]
        quote_reserved = sum((r[1] for r in self._reserved), ZERO)
        margin_reserved = sum((r[2] for r in self._reserved), ZERO)
        free_quote = snap.balances.get(spot_market.quote, Balance(ZERO)).free - quote_reserved
        if quote_needed > free_quote:
            return (f"risk: spot {spot_market.quote} free {free_quote:.2f} below the {quote_needed:.2f} the buy "
                    "needs")  # fmt: skip
        available = snap.margin.available - margin_reserved
        if margin_needed > available:
            return (f"risk: perp margin available {available:.2f} below the {margin_needed:.2f} the short needs "
                    f"at {risk.leverage}x plus {risk.margin_buffer} buffer")  # fmt: skip
        self._reserved.append((now, quote_needed, margin_needed))
        return None
