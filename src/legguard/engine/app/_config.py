"""`legguard run` configuration: one TOML file, validated completely before anything connects or trades.

Every error names the key (or the TOML line) and the value; credentials are never in the file, only the names
of the environment variables that hold them.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from legguard.engine._spec import (
    BreakerConfig,
    Deadlines,
    DeadmanConfig,
    EngineConfig,
    ExitConfig,
    RiskConfig,
    SpecError,
    to_decimal,
)
from legguard.fsm import ExecutionStyle, LegRole, OrphanPolicy

from ._carry import FundingParams, FundingStrategy
from ._strategy import (
    PYTHON_PREFIX,
    Pair,
    PremiumTrigger,
    Strategy,
    StrategyLoadError,
    build_user_strategy,
    load_strategy_class,
)

ZERO = Decimal(0)
VENUE_KINDS = ("sim", "emulator", "binance")
DURABILITIES = ("process", "power")
# The emulator's documented default credentials (see `legguard emulator --help`); used for kind "emulator"
# only, when the environment variables named in the config are unset.
EMULATOR_DEFAULT_KEY = "legguard-emulator-key"
EMULATOR_DEFAULT_SECRET = "legguard-emulator-secret"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and says what is allowed."""


@dataclass(frozen=True, slots=True)
class Credentials:
    api_key: str
    api_secret: str

    def __repr__(self) -> str:  # never print secrets, not even by accident
        return "Credentials(api_key=***, api_secret=***)"


MARGIN_TYPES = ("cross", "isolated")


@dataclass(frozen=True, slots=True)
class VenueConfig:
    kind: str
    url: str | None = None
    seed: int = 7
    api_key_env: str | None = None
    api_secret_env: str | None = None
    testnet: bool | None = None  # kind binance only, and required there: which money is at stake
    leverage: int | None = None  # the perp leverage the account must have (checked before trading)
    margin_type: str | None = None  # "cross" | "isolated" (checked before trading)

    @property
    def endpoint(self) -> str:
        """Which venue, in words that hold no secret: `sim`, `emulator http://...`, `binance testnet`."""
        if self.kind == "binance":
            return "binance testnet" if self.testnet else "binance mainnet"
        if self.kind == "emulator":
            return f"emulator {self.url}"
        return self.kind

    def credentials(self, environ: Mapping[str, str] | None = None) -> Credentials | None:
        """Both environment variables set, or a ConfigError naming the missing one. The emulator's
        documented defaults apply only to kind `emulator`, and only when both are unset."""
        env = os.environ if environ is None else environ
        if self.kind == "sim":
            return None
        names = (self.api_key_env, self.api_secret_env)
        values = [env.get(name, "") if name else "" for name in names]
        if all(values):
            return Credentials(values[0], values[1])
        if not any(values) and self.kind == "emulator":
            return Credentials(EMULATOR_DEFAULT_KEY, EMULATOR_DEFAULT_SECRET)
        missing = [
            f"{name!r} (venue.{key})" if name else f"venue.{key}"
            for name, value, key in zip(names, values, ("api_key_env", "api_secret_env"), strict=True)
            if not value
        ]
        if any(values):
            problem = f"{missing[0]} is not set but the other one is; set both"
        else:
            problem = f"{' and '.join(missing)} are not set; kind {self.kind!r} needs both"
        raise ConfigError(f"venue: credentials: environment variable {problem}")


ALERT_FORMATS = ("json", "slack", "discord", "telegram")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus endpoint: off unless a port is given; loopback unless a host is given."""

    port: int | None = None
    host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    """Webhook alerts: off unless `webhook_url` is given. `dedupe` seconds: the same alert (kind + subject)
    is sent at most once per window; `rate` alerts per minute at most; `queue` alerts wait at most (the
    oldest are dropped); `timeout` seconds per POST."""

    webhook_url: str | None = None
    format: str = "json"
    chat_id: str | None = None  # telegram only
    dedupe: float = 60.0
    rate: int = 20
    queue: int = 100
    timeout: float = 5.0

    def __repr__(self) -> str:  # a webhook URL is a credential (Slack, Discord, Telegram embed tokens in it)
        return f"AlertsConfig(webhook_url={'***' if self.webhook_url else None}, format={self.format!r})"


STRATEGY_KINDS = ("premium", "funding")
# [strategy] keys by kind ("kind" itself is allowed for all; a python: strategy gets every other key as params).
STRATEGY_KEYS: dict[str, set[str]] = {
    "premium": {"premium_threshold", "cooldown"},
    "funding": {
        "cooldown",
        "horizon",
        "min_edge",
        "close_below",
        "min_hold",
        "funding_interval",
        "funding_poll",
        "max_funding_age",
        "orphan_prior",
        "orphan_prior_weight",
    },
}


@dataclass(frozen=True, slots=True)
class StrategyConfig:
    """`[strategy]`: which signal opens (and may close) packages, and its parameters."""

    kind: str = "premium"  # premium | funding | python:<module>:<Class>
    premium_threshold: Decimal = Decimal("0.0005")  # premium
    cooldown: float = 0.5  # premium
    funding: FundingParams = field(default_factory=FundingParams)  # funding
    user_class: type[Any] | None = field(default=None, compare=False)  # python:
    params: Mapping[str, Any] = field(default_factory=dict)  # python: the other keys, as written
    funding_poll: float = 10.0  # seconds between funding-rate reads (strategies that need funding)

    def make(self, pairs: tuple[Pair, ...]) -> Strategy:
        """A fresh strategy for a run (strategies keep state: cooldowns, the last evaluation)."""
        if self.kind == "funding":
            return FundingStrategy(pairs, self.funding)
        if self.user_class is not None:
            try:
                return build_user_strategy(self.user_class, pairs, self.params)
            except StrategyLoadError as exc:
                raise ConfigError(f"strategy.kind: {self.kind!r}: {exc}") from None
        return PremiumTrigger(pairs, threshold=self.premium_threshold, cooldown=self.cooldown)


@dataclass(frozen=True, slots=True)
class RunConfig:
    venue: VenueConfig
    pairs: tuple[Pair, ...]
    engine: EngineConfig
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    durability: str = "process"
    # Signed anchors of the journal's head (engine/journal/_anchors.py): off unless a key file is configured.
    anchor_key: Path | None = None  # Ed25519 private key, outside the journal; created 0600 if absent
    anchors: Path | None = None  # the append-only anchors file (default: <db>.anchors)
    anchor_interval: float = 60.0  # seconds between anchors while the engine runs (and one at shutdown)
    source: Path | None = field(default=None, compare=False)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)


_SCHEMA: dict[str, set[str]] = {
    "": {
        "venue",
        "pairs",
        "strategy",
        "engine",
        "deadlines",
        "breaker",
        "journal",
        "deadman",
        "metrics",
        "alerts",
        "exit",
        "risk",
    },
    "venue": {"kind", "url", "seed", "api_key_env", "api_secret_env", "testnet", "leverage", "margin_type"},
    "pairs": {"spot", "perp", "quantity", "execution", "maker_leg", "max_slippage"},
    # "strategy": its keys depend on its kind (STRATEGY_KEYS, checked by parse_strategy)
    "engine": {
        "min_spread",
        "policy",
        "max_live_packages",
        "max_book_age",
        "max_notional",
        "reconcile_interval",
        "funding_interval",
        "spot_fee_in_base",
        "keep_warm",
    },
    "deadlines": {"ack", "fill", "unwind", "leg", "recv_window", "clock_allowance"},
    "breaker": {"max_orphans", "window", "resume_after"},
    "metrics": {"port", "host"},
    "alerts": {"webhook_url", "format", "chat_id", "dedupe", "rate", "queue", "timeout"},
    "journal": {"durability", "anchor_key", "anchors", "anchor_interval"},
    "deadman": {"enabled", "countdown", "heartbeat"},
    "exit": {"enabled", "basis_below", "min_hold", "max_hold", "loss_limit", "deadline", "interval"},
    "risk": {
        "max_pair_notional",
        "max_total_notional",
        "max_pair_packages",
        "leverage",
        "margin_buffer",
        "check_balances",
        "collateral",
        "collateral_target",
        "collateral_band",
        "spot_reserve",
        "collateral_max_per_hour",
        "collateral_min",
        "collateral_interval",
        "balance_max_age",
        "margin_guard",
        "margin_warn",
        "margin_act",
        "margin_interval",
    },
}


def load_config(path: Path) -> RunConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        return parse_config(data, source=path)
    except SpecError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_config(data: Mapping[str, Any], source: Path | None = None) -> RunConfig:
    _check_keys("", data)
    venue_t = _table(data, "venue", required=True)
    _check_keys("venue", venue_t)
    kind = _str(venue_t, "venue.kind", required=True)
    if kind not in VENUE_KINDS:
        raise ConfigError(f"venue.kind: {kind!r} is invalid; allowed: {', '.join(VENUE_KINDS)}")
    url = _str(venue_t, "venue.url")
    testnet = venue_t.get("testnet")
    if kind == "binance":
        if url is not None:
            raise ConfigError(
                f"venue.url: {url!r} is not supported for kind 'binance' (it would be ignored); remove it and set "
                "venue.testnet = true for Binance's testnet or false for mainnet"
            )
        if testnet is None:
            raise ConfigError(
                "venue.testnet: missing; kind 'binance' needs it: true (Binance testnet) or false (mainnet, real money)"
            )
    elif testnet is not None:
        raise ConfigError(f"venue.testnet: only applies to kind 'binance' (this venue is {kind!r}); remove it")
    if testnet is not None and not isinstance(testnet, bool):
        raise ConfigError(f"venue.testnet: {testnet!r} is invalid; expected true or false")
    margin_type = _str(venue_t, "venue.margin_type")
    if margin_type is not None and margin_type not in MARGIN_TYPES:
        raise ConfigError(f"venue.margin_type: {margin_type!r} is invalid; allowed: {', '.join(MARGIN_TYPES)}")
    leverage = _int(venue_t, "venue.leverage", default=0, minimum=0) or None
    if "leverage" in venue_t and leverage is None:
        raise ConfigError("venue.leverage: 0 is invalid; must be >= 1")
    if kind == "emulator" and url is None:
        url = "http://127.0.0.1:8765"
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"venue.url: {url!r} is invalid; expected an http:// or https:// URL")
    venue = VenueConfig(
        kind=kind,
        url=url,
        seed=_int(venue_t, "venue.seed", default=7, minimum=0),
        api_key_env=_str(venue_t, "venue.api_key_env", required=kind == "binance"),
        api_secret_env=_str(venue_t, "venue.api_secret_env", required=kind == "binance"),
        testnet=testnet,
        leverage=leverage,
        margin_type=margin_type,
    )

    pairs_raw = data.get("pairs")
    if not isinstance(pairs_raw, list) or not pairs_raw:
        raise ConfigError("pairs: missing; add at least one [[pairs]] table with spot, perp and quantity")
    pairs = []
    for i, p in enumerate(pairs_raw):
        where = f"pairs[{i}]"
        if not isinstance(p, dict):
            raise ConfigError(f"{where}: expected a table")
        _check_keys("pairs", p, where)
        quantity = to_decimal(f"{where}.quantity", _required(p, f"{where}.quantity"))
        if quantity <= 0:
            raise ConfigError(f"{where}.quantity: {p['quantity']!r} is invalid; must be > 0")
        execution = _str(p, f"{where}.execution") or ExecutionStyle.MAKER_MAKER.value
        styles = [s.value for s in ExecutionStyle]
        if execution not in styles:
            raise ConfigError(f"{where}.execution: {execution!r} is invalid; allowed: {', '.join(styles)}")
        maker_leg = _str(p, f"{where}.maker_leg")
        if maker_leg is not None and execution != ExecutionStyle.MAKER_TAKER:
            raise ConfigError(f'{where}.maker_leg: only applies to execution = "maker-taker" (got {execution!r})')
        if maker_leg not in (None, *(r.value for r in LegRole)):
            raise ConfigError(f"{where}.maker_leg: {maker_leg!r} is invalid; allowed: spot, perp")
        slippage = _decimal(p, f"{where}.max_slippage", Decimal("0.0005"))
        if not 0 <= slippage < Decimal("0.05"):
            raise ConfigError(f"{where}.max_slippage: {p['max_slippage']!r} is invalid; a fraction in [0, 0.05), "
                              "e.g. 0.0005 for 5 bp beyond the L2 price covering the quantity")  # fmt: skip
        pairs.append(
            Pair(
                _str(p, f"{where}.spot", required=True) or "",
                _str(p, f"{where}.perp", required=True) or "",
                quantity,
                execution=ExecutionStyle(execution),
                maker_leg=LegRole(maker_leg or LegRole.SPOT.value),
                max_slippage=slippage,
            )
        )

    strategy_t = _table(data, "strategy")
    engine_t = _table(data, "engine")
    _check_keys("engine", engine_t)
    deadlines_t = _table(data, "deadlines")
    _check_keys("deadlines", deadlines_t)
    breaker_t = _table(data, "breaker")
    _check_keys("breaker", breaker_t)
    journal_t = _table(data, "journal")
    _check_keys("journal", journal_t)
    deadman_t = _table(data, "deadman")
    _check_keys("deadman", deadman_t)
    deadman_enabled = deadman_t.get("enabled", True)
    if not isinstance(deadman_enabled, bool):
        raise ConfigError(f"deadman.enabled: {deadman_enabled!r} is invalid; expected true or false")

    policy = _str(engine_t, "engine.policy") or OrphanPolicy.FLATTEN.value
    if policy not in {p.value for p in OrphanPolicy}:
        raise ConfigError(f"engine.policy: {policy!r} is invalid; allowed: flatten, trim")
    durability = _str(journal_t, "journal.durability") or "process"
    if durability not in DURABILITIES:
        raise ConfigError(f"journal.durability: {durability!r} is invalid; allowed: {', '.join(DURABILITIES)}")

    defaults = Deadlines()
    engine = EngineConfig(
        deadlines=Deadlines(
            ack=_seconds(deadlines_t, "deadlines.ack", defaults.ack),
            fill=_seconds(deadlines_t, "deadlines.fill", defaults.fill),
            unwind=_seconds(deadlines_t, "deadlines.unwind", defaults.unwind),
            leg=_seconds(deadlines_t, "deadlines.leg", defaults.leg),
            recv_window=_seconds(deadlines_t, "deadlines.recv_window", defaults.recv_window),
            clock_allowance=_seconds(deadlines_t, "deadlines.clock_allowance", defaults.clock_allowance),
        ),
        breaker=BreakerConfig(
            max_orphans=_int(breaker_t, "breaker.max_orphans", default=5, minimum=1),
            window=_seconds(breaker_t, "breaker.window", 30.0),
            resume_after=_seconds(breaker_t, "breaker.resume_after", 0.0) if "resume_after" in breaker_t else None,
        ),
        policy=OrphanPolicy(policy),
        min_spread=_decimal(engine_t, "engine.min_spread", Decimal(0)),
        max_book_age=_seconds(engine_t, "engine.max_book_age", 2.0),
        max_live_packages=_int(engine_t, "engine.max_live_packages", default=50, minimum=1),
        max_notional=_decimal(engine_t, "engine.max_notional", Decimal(1_000_000), positive=True),
        reconcile_interval=_seconds(engine_t, "engine.reconcile_interval", 5.0),
        funding_interval=_seconds(engine_t, "engine.funding_interval", 60.0),
        spot_fee_in_base=_bool(engine_t, "engine.spot_fee_in_base", True),
        keep_warm=_keep_warm(engine_t),
        deadman=DeadmanConfig(
            enabled=deadman_enabled,
            countdown=_seconds(deadman_t, "deadman.countdown", 10.0),
            heartbeat=_seconds(deadman_t, "deadman.heartbeat", 2.5),
        ),
        exit=parse_exit(_table(data, "exit"), present="exit" in data),
        risk=parse_risk(_table(data, "risk")),
    )

    def path(name: str) -> Path | None:
        text = _str(journal_t, name)
        if text is None:
            return None
        value = Path(text).expanduser()
        # Relative to the config file, so the config means the same wherever `legguard` is started from.
        return value if value.is_absolute() or source is None else source.parent / value

    strategy = parse_strategy(strategy_t, tuple(pairs), source)
    basis_below = engine.exit.basis_below
    premium_kind = strategy.kind == "premium"
    if premium_kind and engine.exit.enabled and basis_below is not None and basis_below >= strategy.premium_threshold:
        raise ConfigError(
            f"exit.basis_below: {str(basis_below)!r} is invalid; must be below strategy.premium_threshold "
            f"({strategy.premium_threshold}), or every package would be closed as soon as it is opened"
        )
    return RunConfig(
        venue=venue,
        pairs=tuple(pairs),
        engine=engine,
        strategy=strategy,
        durability=durability,
        anchor_key=path("journal.anchor_key"),
        anchors=path("journal.anchors"),
        anchor_interval=_seconds(journal_t, "journal.anchor_interval", 60.0),
        source=source,
        metrics=_metrics(_table(data, "metrics")),
        alerts=_alerts(_table(data, "alerts")),
    )


def parse_strategy(t: Mapping[str, Any], pairs: tuple[Pair, ...], source: Path | None = None) -> StrategyConfig:
    """`[strategy]`: `kind` premium (the default), funding, or python:<module>:<Class> (a user-defined strategy,
    imported from the config file's directory or sys.path and built once here, so that a bad path or a refused
    parameter is a config error before anything connects)."""
    kind = _str(t, "strategy.kind") or "premium"
    if kind.startswith(PYTHON_PREFIX):
        params = {k: v for k, v in t.items() if k != "kind"}
        poll = _seconds(t, "strategy.funding_poll", 10.0)
        try:
            cls = load_strategy_class(kind, source.resolve().parent if source is not None else None)
            build_user_strategy(cls, pairs, params)
        except StrategyLoadError as exc:
            raise ConfigError(f"strategy.kind: {kind!r}: {exc}") from None
        return StrategyConfig(kind=kind, user_class=cls, params=params, funding_poll=poll)
    if kind not in STRATEGY_KINDS:
        raise ConfigError(
            f"strategy.kind: {kind!r} is invalid; allowed: {', '.join(STRATEGY_KINDS)}, or python:<module>:<Class> "
            "for a strategy of your own (docs/strategy.md)"
        )
    allowed = STRATEGY_KEYS[kind] | {"kind"}
    for key in t:
        if key not in allowed:
            other = next((k for k, keys in STRATEGY_KEYS.items() if key in keys), None)
            if other is not None:
                raise ConfigError(f"strategy.{key}: only applies to kind {other!r} (kind is {kind!r}); remove it")
            raise ConfigError(f"strategy.{key}: unknown key; allowed for kind {kind!r}: {', '.join(sorted(allowed))}")
    if kind == "premium":
        return StrategyConfig(
            kind=kind,
            premium_threshold=_decimal(t, "strategy.premium_threshold", Decimal("0.0005")),
            cooldown=_seconds(t, "strategy.cooldown", 0.5),
        )
    d = FundingParams()
    min_edge = _decimal(t, "strategy.min_edge", d.min_edge)
    close_below = _decimal(t, "strategy.close_below", d.close_below)
    if close_below >= min_edge:
        raise ConfigError(
            f"strategy.close_below: {str(close_below)!r} is invalid; must be below strategy.min_edge ({min_edge}), "
            "so that a package is not closed on the next wobble of the rate after it opened"
        )
    min_hold = t.get("min_hold", d.min_hold)
    if isinstance(min_hold, bool) or not isinstance(min_hold, int | float) or not 0 <= min_hold < math.inf:
        raise ConfigError(f"strategy.min_hold: {min_hold!r} is invalid; a number of seconds >= 0")
    prior = _decimal(t, "strategy.orphan_prior", d.orphan_prior)
    if not 0 <= prior <= 1:
        raise ConfigError(f"strategy.orphan_prior: {t['orphan_prior']!r} is invalid; a fraction in [0, 1]")
    poll = _seconds(t, "strategy.funding_poll", d.funding_poll)
    max_age = _seconds(t, "strategy.max_funding_age", max(d.max_funding_age, 3 * poll))
    if max_age <= poll:
        raise ConfigError(
            f"strategy.max_funding_age: {max_age:g} is invalid; must be more than strategy.funding_poll ({poll:g}), "
            "or every read would be too old before the next one"
        )
    funding = FundingParams(
        horizon=_seconds(t, "strategy.horizon", d.horizon),
        min_edge=min_edge,
        close_below=close_below,
        min_hold=float(min_hold),
        cooldown=_seconds(t, "strategy.cooldown", d.cooldown),
        funding_interval=_seconds(t, "strategy.funding_interval", 1.0) if "funding_interval" in t else None,
        funding_poll=poll,
        max_funding_age=max_age,
        orphan_prior=prior,
        orphan_prior_weight=_int(t, "strategy.orphan_prior_weight", default=d.orphan_prior_weight, minimum=1),
    )
    return StrategyConfig(kind=kind, funding=funding, funding_poll=poll)


def _metrics(table: Mapping[str, Any]) -> MetricsConfig:
    _check_keys("metrics", table)
    port = None
    if "port" in table:
        port = _int(table, "metrics.port", default=0, minimum=1)
        if port > 65535:
            raise ConfigError(f"metrics.port: {port!r} is invalid; must be 1..65535")
    return MetricsConfig(port=port, host=_str(table, "metrics.host") or "127.0.0.1")


def _alerts(table: Mapping[str, Any]) -> AlertsConfig:
    _check_keys("alerts", table)
    url = _str(table, "alerts.webhook_url")
    if url is not None and not url.startswith(("http://", "https://")):
        # The value may embed a token: name the key, not the value.
        raise ConfigError("alerts.webhook_url: invalid; expected an http:// or https:// URL")
    fmt = _str(table, "alerts.format") or "json"
    if fmt not in ALERT_FORMATS:
        raise ConfigError(f"alerts.format: {fmt!r} is invalid; allowed: {', '.join(ALERT_FORMATS)}")
    chat_id = table.get("chat_id")
    if chat_id is not None and not isinstance(chat_id, str | int):
        raise ConfigError(f"alerts.chat_id: {chat_id!r} is invalid; expected a string or an integer")
    if fmt == "telegram" and url is not None and chat_id is None:
        raise ConfigError("alerts.chat_id: missing; format 'telegram' needs the chat to post to")
    return AlertsConfig(
        webhook_url=url,
        format=fmt,
        chat_id=None if chat_id is None else str(chat_id),
        dedupe=_seconds(table, "alerts.dedupe", 60.0),
        rate=_int(table, "alerts.rate", default=20, minimum=1),
        queue=_int(table, "alerts.queue", default=100, minimum=1),
        timeout=_seconds(table, "alerts.timeout", 5.0),
    )


def parse_exit(t: Mapping[str, Any], *, present: bool = True) -> ExitConfig:
    """`[exit]`: present -> on unless `enabled = false` (a policy key set to `false` turns that policy off);
    absent -> off: nothing closes a package by itself unless the config says when (operators still can)."""
    _check_keys("exit", t)
    d = ExitConfig()
    return ExitConfig(
        enabled=_bool(t, "exit.enabled", present),
        basis_below=None if t.get("basis_below") is False else _decimal(t, "exit.basis_below", d.basis_below or ZERO),
        min_hold=_seconds(t, "exit.min_hold", 0.0) if "min_hold" in t else 0.0,
        max_hold=None if t.get("max_hold", False) is False else _seconds(t, "exit.max_hold", 0.0),
        loss_limit=None if t.get("loss_limit", False) is False else _decimal(t, "exit.loss_limit", ZERO, positive=True),
        deadline=_seconds(t, "exit.deadline", d.deadline),
        interval=_seconds(t, "exit.interval", d.interval),
    )


def parse_risk(t: Mapping[str, Any]) -> RiskConfig:
    """`[risk]`: limits left out are not enforced; balance checks and the margin guard are on by default."""
    _check_keys("risk", t)
    d = RiskConfig()

    def optional(key: str) -> Decimal | None:
        return _decimal(t, f"risk.{key}", ZERO, positive=True) if key in t else None

    return RiskConfig(
        max_pair_notional=optional("max_pair_notional"),
        max_total_notional=optional("max_total_notional"),
        max_pair_packages=_int(t, "risk.max_pair_packages", default=1, minimum=1) if "max_pair_packages" in t else None,
        leverage=_int(t, "risk.leverage", default=d.leverage, minimum=1),
        margin_buffer=_decimal(t, "risk.margin_buffer", d.margin_buffer),
        check_balances=_bool(t, "risk.check_balances", True),
        balance_max_age=_seconds(t, "risk.balance_max_age", d.balance_max_age),
        margin_guard=_bool(t, "risk.margin_guard", True),
        margin_warn=_decimal(t, "risk.margin_warn", d.margin_warn),
        margin_act=_decimal(t, "risk.margin_act", d.margin_act),
        margin_interval=_seconds(t, "risk.margin_interval", d.margin_interval),
        collateral=_bool(t, "risk.collateral", False),
        collateral_target=_decimal(t, "risk.collateral_target", d.collateral_target),
        collateral_band=_decimal(t, "risk.collateral_band", d.collateral_band),
        spot_reserve=_decimal(t, "risk.spot_reserve", d.spot_reserve),
        collateral_max_per_hour=_decimal(t, "risk.collateral_max_per_hour", d.collateral_max_per_hour),
        collateral_min=_decimal(t, "risk.collateral_min", d.collateral_min),
        collateral_interval=_seconds(t, "risk.collateral_interval", d.collateral_interval),
    )


# --- small typed readers; each error names the dotted key -------------------------------------------


def _bool(table: Mapping[str, Any], name: str, default: bool) -> bool:
    value = table.get(name.rsplit(".", 1)[-1], default)
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: {value!r} is invalid; expected true or false")
    return value


def _check_keys(section: str, table: Mapping[str, Any], where: str | None = None) -> None:
    allowed = _SCHEMA[section]
    for key in table:
        if key not in allowed:
            name = f"{where or section}.{key}" if (where or section) else key
            raise ConfigError(f"{name}: unknown key; allowed here: {', '.join(sorted(allowed))}")


def _table(data: Mapping[str, Any], key: str, *, required: bool = False) -> Mapping[str, Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{key}: missing; add a [{key}] table")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table, got {type(value).__name__}")
    return value


def _required(table: Mapping[str, Any], name: str) -> Any:
    key = name.rsplit(".", 1)[-1]
    if key not in table:
        raise ConfigError(f"{name}: missing")
    return table[key]


def _str(table: Mapping[str, Any], name: str, *, required: bool = False) -> str | None:
    key = name.rsplit(".", 1)[-1]
    if key not in table:
        if required:
            raise ConfigError(f"{name}: missing")
        return None
    value = table[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: {value!r} is invalid; expected a non-empty string")
    return value


def _int(table: Mapping[str, Any], name: str, *, default: int, minimum: int) -> int:
    key = name.rsplit(".", 1)[-1]
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: {value!r} is invalid; expected an integer")
    if value < minimum:
        raise ConfigError(f"{name}: {value!r} is invalid; must be >= {minimum}")
    return value


def _keep_warm(engine_t: Mapping[str, Any]) -> float | None:
    """`engine.keep_warm`: seconds between warming rounds, or false / 0 for off (the default)."""
    value = engine_t.get("keep_warm", False)
    if value is False or (not isinstance(value, bool) and isinstance(value, int | float) and value == 0):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"engine.keep_warm: {value!r} is invalid; expected seconds between warming rounds, or false")
    if value > 1.0:
        raise ConfigError(f"engine.keep_warm: {value!r} is invalid; above 1 s nothing stays warm (try 0.001)")
    return float(value)


def _seconds(table: Mapping[str, Any], name: str, default: float) -> float:
    key = name.rsplit(".", 1)[-1]
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}: {value!r} is invalid; expected a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}: {value!r} is invalid; must be a number of seconds > 0")
    return float(value)


def _decimal(table: Mapping[str, Any], name: str, default: Decimal, *, positive: bool = False) -> Decimal:
    key = name.rsplit(".", 1)[-1]
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, float):
        value = repr(value)  # TOML floats: keep the digits the user wrote
    d = to_decimal(name, value)
    if positive and d <= 0:
        raise ConfigError(f"{name}: {table[key]!r} is invalid; must be > 0")
    return d
