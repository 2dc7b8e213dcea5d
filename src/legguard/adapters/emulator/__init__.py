"""legguard.adapters.emulator — a Binance spot + USDⓈ-M server on loopback, so unmodified ccxt trades offline.

Map:
- `_emulator.py`  `Emulator`: the state behind the wire (the shared matching engine, order metadata, update
                  ids, timers, faults, the market driver) and its listeners' lifecycle.
- `_rest.py`      the REST routes (`make_app`), signatures, weights, the control API; it serves an `Emulator`.
- `_ws.py`        the websockets (`Hub`): market streams, the spot WebSocket API, the listenKey user stream;
                  it needs only a small `StreamHost` of the emulator.
- `_wire.py`      Binance's JSON shapes and error codes.
- `_server.py`    `serve_emulator`: an emulator with its routes, listening for the duration of a block.

Direction: `_server` → `_rest` → `_emulator` → `_ws` → `_wire`; nothing imports back.
"""

from ._emulator import DEFAULT_API_KEY as DEFAULT_API_KEY
from ._emulator import DEFAULT_API_SECRET as DEFAULT_API_SECRET
from ._emulator import Emulator as Emulator
from ._server import serve_emulator as serve_emulator
