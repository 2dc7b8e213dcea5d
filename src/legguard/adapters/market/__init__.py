"""legguard.adapters.market — the simulated exchange both the sim venue and the emulator run on.

Map:
- `_matching.py`   `MatchingEngine`: seeded L2 books, our orders, accounts, fees, post-only / reduce-only /
                   margin checks and fills (`Fill`); `default_markets()` the reference markets.
- `_generator.py`  `MarketGenerator`: the wider market moving the books (mean-reverting perp premium, trade
                   prints); `DepthReplay` replays the recorded Binance depth stream.

Neither module knows who serves it: `sim/` drives it in-process on trio, `emulator/` over Binance's wire.
"""

from ._generator import RECORDED_DEPTH_DIR as RECORDED_DEPTH_DIR
from ._generator import DepthReplay as DepthReplay
from ._generator import GeneratorConfig as GeneratorConfig
from ._generator import MarketGenerator as MarketGenerator
from ._generator import MarketTick as MarketTick
from ._generator import TradePrint as TradePrint
from ._matching import Fill as Fill
from ._matching import MatchingEngine as MatchingEngine
from ._matching import default_markets as default_markets
