"""legguard.adapters.ccxt — the client path to real exchanges (Binance spot + USDⓈ-M) through unmodified ccxt.

Map:
- `_venue.py`    `CcxtVenue` / `open_ccxt_venue`: ccxt and ccxt.pro on trio via one trio-asyncio loop; the
                 order path arms (signs, serialises) both legs and writes them back to back.
- `_convert.py`  ccxt errors, orders, markets and books translated into the domain vocabulary.
- `_http.py`     the order path's transport: warm keep-alive connections on trio, armed requests.

Heavy (ccxt): `legguard.adapters` imports this room only on first use.
"""

from ._venue import EXCHANGE_IDS as EXCHANGE_IDS
from ._venue import CcxtVenue as CcxtVenue
from ._venue import CcxtVenueConfig as CcxtVenueConfig
from ._venue import open_ccxt_venue as open_ccxt_venue
