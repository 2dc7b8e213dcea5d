"""What opens packages in the demo (and in `legguard run`): the perp-premium trigger; and the demo's fault
plan, which picks a fault to inject for some packages.

The trigger only proposes: the engine still prices each package from the book and refuses it (abort) when the
spread those limit prices guarantee, after maker fees, is below the configured minimum.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal

from legguard.domain import BookSnapshot
from legguard.engine._exits import premium as premium
from legguard.engine._spec import PackageSpec, SpecError
from legguard.fsm import ExecutionStyle, LegRole

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


@dataclass(slots=True)
class PremiumTrigger:
    """Propose a package for a pair when the perp premium over spot exceeds `threshold`, at most once per
    `cooldown` seconds per pair."""

    pairs: tuple[Pair, ...]
    threshold: Decimal = Decimal("0.0005")
    cooldown: float = 0.5
    _last: dict[str, float] = field(default_factory=dict)

    def propose(self, books: dict[str, BookSnapshot], now: float) -> list[PackageSpec]:
        out: list[PackageSpec] = []
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
            out.append(
                PackageSpec(
                    pair.spot_symbol,
                    pair.perp_symbol,
                    pair.quantity,
                    execution=pair.execution,
                    maker_leg=pair.maker_leg,
                    max_slippage=pair.max_slippage,
                )
            )
        return out


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
