"""legguard.adapters — everything that touches a venue, behind one `Venue` protocol.

Map:
- `_types.py`     the shared vocabulary: Market, BookSnapshot, OrderRequest, OrderUpdate, errors, `Venue`.
- `_matching.py`  the seeded L2 matching engine (books, our orders, accounts, fees) shared by the simulated
                  venue and the Binance-wire emulator.
- `_market.py`    the simulated wider market: seeded spot/perp book and trade-print generator (mean-reverting
                  perp premium) and the replay of recorded Binance depth.
- `_sim.py`       `SimVenue`: the in-process simulated venue (latency, market generator, fault injection).
- `_ccxt.py`      `CcxtVenue`: Binance spot + USDⓈ-M through unmodified ccxt / ccxt.pro on trio via
                  trio-asyncio (`open_ccxt_venue`); `_ccxt_convert.py` translates ccxt errors, orders, markets
                  and books into the vocabulary above; `_ccxt_http.py` is the order path's transport (warm
                  keep-alive connections on trio; armed requests written back to back). Imported on first use
                  (ccxt is heavy).
- `_redact.py`    the secret guard for text: credentials, signatures, listen keys masked in logs and errors
                  (one process-wide registry; the ccxt venue and `legguard run` register what they hold).
- `_emulator.py`  `Emulator` / `serve_emulator`: the matching engine served over Binance's spot + USDⓈ-M REST
                  and websocket protocols on loopback (`_emulator_rest.py`, `_emulator_ws.py`; JSON shapes and
                  error codes in `_wire.py`), so unmodified ccxt trades against it. Imported on first use.
"""

from typing import TYPE_CHECKING

from ._market import DepthReplay as DepthReplay
from ._market import GeneratorConfig as GeneratorConfig
from ._market import MarketGenerator as MarketGenerator
from ._market import MarketTick as MarketTick
from ._market import TradePrint as TradePrint
from ._matching import Fill as Fill
from ._matching import MatchingEngine as MatchingEngine
from ._matching import default_markets as default_markets
from ._sim import SimConfig as SimConfig
from ._sim import SimVenue as SimVenue
from ._sim import open_sim_venue as open_sim_venue
from ._types import ZERO as ZERO
from ._types import ArmedOrder as ArmedOrder
from ._types import AuthenticationFailed as AuthenticationFailed
from ._types import Balance as Balance
from ._types import BookSnapshot as BookSnapshot
from ._types import DuplicateOrder as DuplicateOrder
from ._types import MalformedResponse as MalformedResponse
from ._types import Market as Market
from ._types import MarketKind as MarketKind
from ._types import OrderNotFound as OrderNotFound
from ._types import OrderOrigin as OrderOrigin
from ._types import OrderRejected as OrderRejected
from ._types import OrderRequest as OrderRequest
from ._types import OrderStatus as OrderStatus
from ._types import OrderType as OrderType
from ._types import OrderUpdate as OrderUpdate
from ._types import OutcomeUnknown as OutcomeUnknown
from ._types import RateLimited as RateLimited
from ._types import RejectReason as RejectReason
from ._types import Side as Side
from ._types import StreamDisconnected as StreamDisconnected
from ._types import Venue as Venue
from ._types import VenueError as VenueError

if TYPE_CHECKING:
    from ._ccxt import CcxtVenue as CcxtVenue
    from ._ccxt import CcxtVenueConfig as CcxtVenueConfig
    from ._ccxt import open_ccxt_venue as open_ccxt_venue
    from ._emulator import Emulator as Emulator
    from ._emulator import serve_emulator as serve_emulator

_LAZY_CCXT = ("CcxtVenue", "CcxtVenueConfig", "open_ccxt_venue")
_LAZY_EMULATOR = ("Emulator", "serve_emulator")


def __getattr__(name: str) -> object:
    if name in _LAZY_CCXT:
        from . import _ccxt

        return getattr(_ccxt, name)
    if name in _LAZY_EMULATOR:
        from . import _emulator

        return getattr(_emulator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_CCXT, *_LAZY_EMULATOR})
