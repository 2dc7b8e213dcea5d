"""Preflight: everything checked before the first order of `run` / `recover`, and alone as `legguard check`.

Venue reachable, clock within the signing window, credentials valid with trading permission on both markets,
the futures account in one-way mode with the configured leverage and margin type, every pair's symbols
trading, balances for one package of every pair. Each failure is one line naming the check, what was found
and how to fix it. The checks only read: nothing is sent to any order endpoint.

Venues that offer the account reads (`AccountProbe`, the ccxt venue for Binance and the emulator) get every
check; the in-process simulated venue has no clock, keys or account settings, so those checks pass as "n/a".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from legguard.adapters._venue import Venue
from legguard.domain import AuthenticationFailed, Balance, MarketKind, VenueError
from legguard.engine._spec import PackageSpec, SpecError, validate_spec

from ._strategy import Pair

# Binance refuses a signed request whose timestamp is more than 1 s ahead of its clock, or older than the
# recvWindow (ccxt sends 10 s). Leave room for the request's own travel time.
CLOCK_AHEAD_LIMIT = 0.5  # seconds the local clock may run ahead of the venue's
CLOCK_BEHIND_LIMIT = 5.0  # seconds it may run behind
PERP_QUOTE_PREFIX = "perp:"


@runtime_checkable
class AccountProbe(Protocol):
    """Signed reads a wire venue offers for the preflight (the ccxt venue implements them)."""

    async def clock_offset(self) -> float:
        """Seconds the venue's clock is ahead of ours (negative: ours is ahead), worst of both markets."""
        ...

    async def can_trade(self, kind: MarketKind) -> bool:
        """A signed read of the account on one market: does the key have trading permission there?"""
        ...

    async def dual_side_position(self) -> bool:
        """USDⓈ-M position mode: True for hedge mode, False for one-way."""
        ...

    async def perp_symbol_settings(self, symbols: Sequence[str]) -> Mapping[str, tuple[int, str]]:
        """Per perp symbol (ccxt unified): (leverage, margin type `cross` | `isolated`)."""
        ...


@runtime_checkable
class BudgetedVenue(Protocol):
    """A venue with a local request budget (the ccxt venue): after the preflight's reads, wait for it."""

    async def refill_budgets(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    found: str
    fix: str = ""
    config: bool = False  # the configuration is wrong (exit 2), not the venue or account (exit 3)

    def line(self) -> str:
        if self.ok:
            return f"{self.name}: {self.found}"
        return f"{self.name}: FAILED: {self.found}" + (f"; fix: {self.fix}" if self.fix else "")

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "found": self.found, "fix": self.fix, "config": self.config}


@dataclass(slots=True)
class PreflightReport:
    venue: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"venue": self.venue, "ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


class PreflightFailed(Exception):
    """At least one preflight check failed; nothing was sent."""

    def __init__(self, report: PreflightReport) -> None:
        self.report = report
        super().__init__("; ".join(c.line() for c in report.failures))

    @property
    def config_problem(self) -> bool:
        """Only configuration problems failed (exit 2); any venue/account problem makes it exit 3."""
        return all(c.config for c in self.report.failures)

    def lines(self) -> list[str]:
        n = len(self.report.failures)
        head = f"preflight against {self.report.venue}: {n} check(s) failed, nothing was sent"
        return [head, *(f"  {c.line()}" for c in self.report.failures)]


def unreachable(venue: str, error: BaseException) -> PreflightReport:
    """The report when the venue could not even be opened (markets not loaded)."""
    found = " ".join(str(error).split()) or type(error).__name__
    fix = "start it (`legguard emulator`) or fix venue.url" if venue.startswith("emulator") else "check the network"
    if isinstance(error, AuthenticationFailed):
        return PreflightReport(venue, [Check("credentials", False, found, _KEYS_FIX)])
    return PreflightReport(venue, [Check("reachable", False, found, fix)])


_KEYS_FIX = (
    "set the environment variables named by venue.api_key_env / venue.api_secret_env to a key of this venue "
    "(testnet keys differ from mainnet keys)"
)


async def preflight(
    venue: Venue,
    pairs: Sequence[Pair],
    *,
    where: str,
    leverage: int | None = None,
    margin_type: str | None = None,
) -> PreflightReport:
    """Run every check against an opened venue; never raises for a venue answer (it becomes a failed check)."""
    report = PreflightReport(where)
    checks = report.checks
    try:
        markets = await venue.load_markets()
    except VenueError as exc:
        return unreachable(where, exc)
    checks.append(Check("reachable", True, f"{len(markets)} markets"))

    probe = venue if isinstance(venue, AccountProbe) else None
    if probe is None:
        checks.append(Check("clock", True, "n/a (in-process venue)"))
        checks.append(Check("credentials", True, "n/a (in-process venue)"))
    else:
        checks.append(await _clock(probe))
        for kind, label in ((MarketKind.SPOT, "spot"), (MarketKind.LINEAR, "USDⓈ-M")):
            checks.append(await _credentials(probe, kind, label))
    perp_symbols = [p.perp_symbol for p in pairs if p.perp_symbol in markets]
    settings: Mapping[str, tuple[int, str]] = {}
    if probe is not None and all(c.ok for c in checks):
        checks.append(await _position_mode(probe))
        settings_check, settings = await _perp_settings(probe, perp_symbols, leverage, margin_type)
        checks.append(settings_check)
    elif probe is None:
        checks.append(Check("position mode", True, "n/a (in-process venue: one-way)"))

    symbols_ok = True
    for i, pair in enumerate(pairs):
        try:
            validate_spec(PackageSpec(pair.spot_symbol, pair.perp_symbol, pair.quantity), markets)
        except SpecError as exc:
            symbols_ok = False
            fix = "fix the pair in the config ([[pairs]]); only markets with status TRADING are listed"
            checks.append(Check(f"pairs[{i}]", False, str(exc), fix, config=True))
    if symbols_ok:
        checks.append(Check("symbols", True, f"{len(pairs)} pair(s), every symbol TRADING"))
        if all(c.ok for c in checks):
            checks.append(await _balances(venue, pairs, markets, settings, leverage))
    return report


async def _clock(probe: AccountProbe) -> Check:
    try:
        offset = await probe.clock_offset()
    except VenueError as exc:
        return Check("clock", False, f"cannot read the server time: {_one(exc)}", "check the network")
    found = f"venue clock {offset * 1000:+.0f} ms from ours"
    if not math.isfinite(offset) or -offset > CLOCK_AHEAD_LIMIT or offset > CLOCK_BEHIND_LIMIT:
        limit = f"allowed: ours at most {CLOCK_AHEAD_LIMIT * 1000:.0f} ms ahead, {CLOCK_BEHIND_LIMIT:.0f} s behind"
        return Check("clock", False, f"{found} ({limit})", "synchronise this machine's clock (NTP: chronyc makestep)")
    return Check("clock", True, found)


async def _credentials(probe: AccountProbe, kind: MarketKind, label: str) -> Check:
    name = f"credentials {label}"
    try:
        can = await probe.can_trade(kind)
    except AuthenticationFailed as exc:
        return Check(name, False, f"a signed read was refused: {_one(exc)}", _KEYS_FIX)
    except VenueError as exc:
        return Check(name, False, f"a signed read failed: {_one(exc)}", "check the network and the venue's status")
    if not can:
        fix = f"enable {label} trading for this API key in the venue's API management"
        return Check(name, False, "the key is valid but has no trading permission (canTrade=false)", fix)
    return Check(name, True, "signed read ok, canTrade")


async def _position_mode(probe: AccountProbe) -> Check:
    try:
        dual = await probe.dual_side_position()
    except VenueError as exc:
        return Check("position mode", False, f"cannot read it: {_one(exc)}", "check the network")
    if dual:
        fix = (
            "switch USDⓈ-M to one-way mode (Binance: Futures > Preferences > Position Mode, or "
            "POST /fapi/v1/positionSide/dual dualSidePosition=false) with no open positions"
        )
        return Check("position mode", False, "hedge mode (dualSidePosition=true)", fix)
    return Check("position mode", True, "one-way (dualSidePosition=false)")


async def _perp_settings(
    probe: AccountProbe, symbols: Sequence[str], leverage: int | None, margin_type: str | None
) -> tuple[Check, Mapping[str, tuple[int, str]]]:
    try:
        settings = await probe.perp_symbol_settings(symbols)
    except VenueError as exc:
        return Check("leverage/margin", False, f"cannot read them: {_one(exc)}", "check the network"), {}
    wrong = []
    for symbol in symbols:
        lev, margin = settings.get(symbol, (0, "?"))
        if leverage is not None and lev != leverage:
            wrong.append(f"{symbol} leverage {lev}x (config: {leverage}x)")
        if margin_type is not None and margin != margin_type:
            wrong.append(f"{symbol} margin {margin} (config: {margin_type})")
    found = ", ".join(f"{s} {settings[s][0]}x {settings[s][1]}" for s in symbols if s in settings) or "no perp"
    if wrong:
        fix = (
            "set them at the venue (POST /fapi/v1/leverage, /fapi/v1/marginType) or change venue.leverage / "
            "venue.margin_type"
        )
        return Check("leverage/margin", False, "; ".join(wrong), fix), settings
    return Check("leverage/margin", True, found), settings


async def _balances(
    venue: Venue,
    pairs: Sequence[Pair],
    markets: Mapping[str, Any],
    settings: Mapping[str, tuple[int, str]],
    leverage: int | None,
) -> Check:
    """Enough spot quote to buy, and perp margin to short, one package of every pair (at the best prices
    now, with taker fees: a conservative bound)."""
    try:
        balances = await venue.fetch_balance()
        need: dict[str, Decimal] = {}
        for pair in pairs:
            spot, perp = markets[pair.spot_symbol], markets[pair.perp_symbol]
            spot_book = await venue.fetch_order_book(pair.spot_symbol)
            perp_book = await venue.fetch_order_book(pair.perp_symbol)
            ask = spot_book.best_ask or spot_book.best_bid
            bid = perp_book.best_bid or perp_book.best_ask
            if ask is None or bid is None:
                return Check("balances", False, f"no prices for {pair.spot_symbol} / {pair.perp_symbol}", "retry")
            lev = settings.get(pair.perp_symbol, (leverage or 1, ""))[0] or 1
            spot_cost = pair.quantity * ask * (1 + spot.taker_fee)
            perp_margin = pair.quantity * bid / lev + pair.quantity * bid * perp.taker_fee
            need[spot.quote] = need.get(spot.quote, Decimal(0)) + spot_cost
            key = PERP_QUOTE_PREFIX + perp.quote
            need[key] = need.get(key, Decimal(0)) + perp_margin
    except VenueError as exc:
        return Check("balances", False, f"cannot read them: {_one(exc)}", "check the network")
    if not any(asset.startswith(PERP_QUOTE_PREFIX) for asset in balances):
        # The in-process venue reports spot balances only; its perp wallet is not part of fetch_balance.
        need = {asset: amount for asset, amount in need.items() if not asset.startswith(PERP_QUOTE_PREFIX)}
    short = []
    for asset, amount in sorted(need.items()):
        free = balances.get(asset, Balance(Decimal(0))).free
        if free < amount:
            short.append(f"{_wallet(asset)} free {_q(free)} < {_q(amount)} needed")
    if short:
        fix = "fund the account (or lower [[pairs]] quantity): one package of every pair must fit"
        return Check("balances", False, "; ".join(short), fix)
    shown = ", ".join(f"{_wallet(a)} free {_q(balances.get(a, Balance(Decimal(0))).free)} >= {_q(n)}"
                      for a, n in need.items())  # fmt: skip
    return Check("balances", True, shown)


def _wallet(asset: str) -> str:
    """`perp:USDT` -> `USDⓈ-M wallet USDT`; spot assets as they are."""
    if asset.startswith(PERP_QUOTE_PREFIX):
        return f"USDⓈ-M wallet {asset.removeprefix(PERP_QUOTE_PREFIX)}"
    return asset


def _q(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01')):f}"


def _one(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
