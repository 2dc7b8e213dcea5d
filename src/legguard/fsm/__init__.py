"""legguard.fsm — the package lifecycle, pure and synchronous.

Map:
- `_table.py`   the transition table (ONE literal), its `transitions.Machine` (the authority on legal moves),
                `Lifecycle` (one package's state, moving by the map read off that machine), and the table /
                mermaid renderers used by `legguard fsm` and `docs/fsm.md`.
- `_events.py`  events fed into a package (order updates, deadlines, faults, ...) and the commands it
                emits (journal intent, send, cancel, query, transitioned).
- `_core.py`    `PackageCore`: the decision core. Given facts and one event it fires triggers and returns
                commands. The engine, the journal replayer and the model checker all run this same code.
- `_check.py`   the explicit-state model checker: every state `PackageCore` reaches against a small causal
                venue and engine model, checked for the lifecycle properties (`legguard fsm --check`).

No I/O, no trio, no clocks in this package.
"""

from ._check import PROFILES as PROFILES
from ._check import PROPERTIES as PROPERTIES
from ._check import Bounds as Bounds
from ._check import CheckReport as CheckReport
from ._check import Counterexample as Counterexample
from ._check import ModelChecker as ModelChecker
from ._check import TraceStep as TraceStep
from ._check import UnknownEdge as UnknownEdge
from ._check import check as check
from ._check import edges_without as edges_without
from ._check import model_plan as model_plan
from ._check import parse_edge as parse_edge
from ._core import MAX_UNWIND_ATTEMPTS as MAX_UNWIND_ATTEMPTS
from ._core import ArmedCancel as ArmedCancel
from ._core import Exposure as Exposure
from ._core import LegPlan as LegPlan
from ._core import OrderFacts as OrderFacts
from ._core import PackageCore as PackageCore
from ._core import PackagePlan as PackagePlan
from ._core import client_order_id as client_order_id
from ._events import Abort as Abort
from ._events import Adopted as Adopted
from ._events import CancelOrder as CancelOrder
from ._events import CloseRequested as CloseRequested
from ._events import Command as Command
from ._events import Dispatch as Dispatch
from ._events import Event as Event
from ._events import ExecutionStyle as ExecutionStyle
from ._events import ExitDeadline as ExitDeadline
from ._events import Fault as Fault
from ._events import FillDeadline as FillDeadline
from ._events import JournalIntent as JournalIntent
from ._events import LegExecution as LegExecution
from ._events import LegRole as LegRole
from ._events import OrderEvent as OrderEvent
from ._events import OrderIntent as OrderIntent
from ._events import OrphanPolicy as OrphanPolicy
from ._events import Purpose as Purpose
from ._events import QueryOrder as QueryOrder
from ._events import Recovered as Recovered
from ._events import Restarted as Restarted
from ._events import SendOrder as SendOrder
from ._events import Shutdown as Shutdown
from ._events import Transitioned as Transitioned
from ._events import VenueReduction as VenueReduction
from ._events import event_from_dict as event_from_dict
from ._table import TERMINAL_STATES as TERMINAL_STATES
from ._table import TRANSITIONS as TRANSITIONS
from ._table import Edge as Edge
from ._table import InvalidTransition as InvalidTransition
from ._table import Lifecycle as Lifecycle
from ._table import State as State
from ._table import Trigger as Trigger
from ._table import lifecycle_machine as lifecycle_machine
from ._table import machine_dest as machine_dest
from ._table import machine_moves as machine_moves
from ._table import render_mermaid as render_mermaid
from ._table import render_table as render_table
from ._table import transition_map as transition_map
