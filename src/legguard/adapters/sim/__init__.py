"""legguard.adapters.sim — the in-process simulated venue.

Map:
- `_venue.py`  `SimVenue` / `open_sim_venue`: the `Venue` protocol over the shared matching engine
               (`adapters/market/`), on trio time: latency, the market generator, fault injection.
"""

from ._venue import SimConfig as SimConfig
from ._venue import SimVenue as SimVenue
from ._venue import open_sim_venue as open_sim_venue
