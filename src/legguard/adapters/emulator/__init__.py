"""legguard.adapters.emulator — a Binance spot + USDⓈ-M server on loopback, so unmodified ccxt trades offline.

Map:
- `_emulator.py`  `Emulator`: the state behind the wire (the shared matching engine, order metadata, update
                  ids, timers, faults, the market driver) and its listeners' lifecycle.
- `_rest.py`      the REST routes (`make_app`), signatures, weights, the control API; it serves an `Emulator`.
- `_ws.py`        the websockets (`Hub`): market streams, the spot WebSocket API, the listenKey user stream;
                  it needs only a small `StreamHost` of the emulator.
- `_wire.py`      Binance's JSON shapes and error codes.
- `_market_data.py` the public market data behind the wire: the tape of trades (the market's prints and our
                  fills), backfilled and live candles, mark / index candles, 24 h windows, open interest,
                  funding (rate from the simulated premium, settlements).
- `_server.py`    `serve_emulator`: an emulator with its routes, listening for the duration of a block.
- `_scenario.py`  `Scenario`: a TOML timeline (price moves, funding flips, timed faults, user-stream lag)
                  played on the emulator's clock (`legguard emulator --scenario FILE`).
- `_routes.py`    the served endpoints and streams as Markdown, from the router itself (docs/emulator.md).

Direction: `_server`, `_routes` → `_rest` → `_emulator` → `_ws` → `_wire`; `_scenario` → `_emulator`;
`_emulator` → `_market_data`; nothing imports back.
"""

from ._emulator import DEFAULT_API_KEY as DEFAULT_API_KEY
from ._emulator import DEFAULT_API_SECRET as DEFAULT_API_SECRET
from ._emulator import Emulator as Emulator
from ._server import serve_emulator as serve_emulator
