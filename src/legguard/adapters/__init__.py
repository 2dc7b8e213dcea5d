"""legguard.adapters — everything that touches a venue, behind one `Venue` protocol.

Map:
- `_venue.py`   the `Venue` protocol (the only thing the engine knows about an exchange) and `ArmedOrder`.
                The vocabulary it speaks (markets, books, orders, updates, errors) is `legguard.domain`,
                re-exported here.
- `market/`     the simulated exchange: the seeded L2 `MatchingEngine` and the `MarketGenerator` that moves
                its books; shared by `sim/` and `emulator/`, knowing neither.
- `sim/`        `SimVenue`: the in-process simulated venue on trio time (latency, faults).
- `ccxt/`       `CcxtVenue`: Binance spot + USDⓈ-M through unmodified ccxt / ccxt.pro on trio via trio-asyncio.
- `_redact.py`  the secret guard for text: credentials, signatures, listen keys masked in logs and errors
                (one process-wide registry; the ccxt venue and `legguard run` register what they hold).
- `emulator/`   `Emulator` / `serve_emulator`: the matching engine served over Binance's REST and websocket
                protocols on loopback, so unmodified ccxt trades against it offline.

Only the vocabulary and the protocol load with this package; each venue room loads on first use (ccxt and
aiohttp are heavy, and the pure core must not pull trio in through here).
"""

from typing import TYPE_CHECKING

from legguard.domain import ZERO as ZERO
from legguard.domain import AuthenticationFailed as AuthenticationFailed
from legguard.domain import Balance as Balance
from legguard.domain import BookSnapshot as BookSnapshot
from legguard.domain import DuplicateOrder as DuplicateOrder
from legguard.domain import MalformedResponse as MalformedResponse
from legguard.domain import Market as Market
from legguard.domain import MarketKind as MarketKind
from legguard.domain import OrderNotFound as OrderNotFound
from legguard.domain import OrderOrigin as OrderOrigin
from legguard.domain import OrderRejected as OrderRejected
from legguard.domain import OrderRequest as OrderRequest
from legguard.domain import OrderStatus as OrderStatus
from legguard.domain import OrderType as OrderType
from legguard.domain import OrderUpdate as OrderUpdate
from legguard.domain import OutcomeUnknown as OutcomeUnknown
from legguard.domain import RateLimited as RateLimited
from legguard.domain import RejectReason as RejectReason
from legguard.domain import Side as Side
from legguard.domain import StreamDisconnected as StreamDisconnected
from legguard.domain import VenueError as VenueError

from ._venue import ArmedOrder as ArmedOrder
from ._venue import Venue as Venue

if TYPE_CHECKING:
    from .ccxt import CcxtVenue as CcxtVenue
    from .ccxt import CcxtVenueConfig as CcxtVenueConfig
    from .ccxt import open_ccxt_venue as open_ccxt_venue
    from .emulator import Emulator as Emulator
    from .emulator import serve_emulator as serve_emulator
    from .market import DepthReplay as DepthReplay
    from .market import Fill as Fill
    from .market import GeneratorConfig as GeneratorConfig
    from .market import MarketGenerator as MarketGenerator
    from .market import MarketTick as MarketTick
    from .market import MatchingEngine as MatchingEngine
    from .market import TradePrint as TradePrint
    from .market import default_markets as default_markets
    from .sim import SimConfig as SimConfig
    from .sim import SimVenue as SimVenue
    from .sim import open_sim_venue as open_sim_venue

_LAZY: dict[str, tuple[str, ...]] = {  # room -> the names it re-exports here on first use
    "market": (
        "DepthReplay",
        "Fill",
        "GeneratorConfig",
        "MarketGenerator",
        "MarketTick",
        "MatchingEngine",
        "TradePrint",
        "default_markets",
    ),
    "sim": ("SimConfig", "SimVenue", "open_sim_venue"),
    "ccxt": ("CcxtVenue", "CcxtVenueConfig", "open_ccxt_venue"),
    "emulator": ("Emulator", "serve_emulator"),
}
_ROOM_OF = {name: room for room, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> object:
    room = _ROOM_OF.get(name)
    if room is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{room}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_ROOM_OF})
