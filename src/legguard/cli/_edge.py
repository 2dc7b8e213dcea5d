"""The CLI edge: one exit-code contract for every command, and never a traceback for a user error or a venue
outage. Every command runs inside `EdgeGroup.invoke`, which turns whatever escapes it (trio wraps errors in
ExceptionGroups) into the one error a person should read, printed as one line on stderr.

Exit codes (README, "Exit codes"):
  0  done, and every package hedged or flat
  1  finished, but something is left unsafe or unexplained (or an internal error)
  2  usage or configuration error (nothing was sent)
  3  the venue refused or could not be reached before trading (nothing was sent)
"""

from __future__ import annotations

import enum
import sys
import traceback
from typing import Any, NoReturn

import trio
import typer
from typer.core import TyperGroup

from legguard.domain import AuthenticationFailed, VenueError
from legguard.engine._spec import SpecError
from legguard.engine.app._config import ConfigError
from legguard.engine.app._control import ControlError
from legguard.engine.app._metrics import MetricsPortError
from legguard.engine.app._preflight import PreflightFailed
from legguard.engine.journal._binding import BindingMismatch
from legguard.engine.journal._store import JournalError


class ExitCode(enum.IntEnum):
    OK = 0
    UNSAFE = 1
    USAGE = 2
    VENUE = 3


class _State:
    """Process-wide CLI state: set by the root callback (--debug) and by commands that start trading."""

    debug: bool = False
    trading: bool = False  # once True, a venue error is no longer "before trading": exit 1, not 3


STATE = _State()


def note_trading() -> None:
    """Called once the first order may have been sent: a venue error from now on leaves state unknown."""
    STATE.trading = True


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


# Which leaf of a group matters most: an explicit exit a command chose, then a person's mistake, then the
# venue, then an interruption, then anything else (a bug). trio.Cancelled is never the reason.
_USAGE = (typer.TyperException, ConfigError, SpecError, JournalError, BindingMismatch, ControlError, MetricsPortError)


def _rank(exc: BaseException) -> int:
    if isinstance(exc, typer.Exit | typer.Abort):
        return 0
    if isinstance(exc, _USAGE):
        return 1
    if isinstance(exc, PreflightFailed):
        return 2
    if isinstance(exc, VenueError | ConnectionError):
        return 3
    if isinstance(exc, KeyboardInterrupt):
        return 4
    if isinstance(exc, trio.Cancelled):
        return 9
    return 5


def the_error(exc: BaseException) -> BaseException:
    """The one member of a (nested) ExceptionGroup a person should read; `exc` itself if not a group."""
    leaves = _leaves(exc)
    return min(leaves, key=_rank) if leaves else exc


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe(exc: BaseException) -> tuple[int, list[str]]:
    """(exit code, lines for stderr) for an error that escaped a command."""
    if isinstance(exc, PreflightFailed):
        code = ExitCode.USAGE if exc.config_problem else ExitCode.VENUE
        head, *checks = exc.lines()
        return code, [f"error: {one_line(head)}", *(f"  - {one_line(line)}" for line in checks)]
    if isinstance(exc, ConfigError | SpecError | BindingMismatch | ControlError | MetricsPortError):
        # another engine on the journal, a busy metrics port: nothing was sent, the operator chooses again
        return ExitCode.USAGE, [f"error: {one_line(str(exc))}"]
    if isinstance(exc, JournalError):
        return ExitCode.USAGE, [f"error: journal: {one_line(str(exc))}"]
    if isinstance(exc, VenueError | ConnectionError):
        detail = one_line(str(exc)) or type(exc).__name__
        if isinstance(exc, AuthenticationFailed):
            detail = f"credentials refused: {detail}"
        if STATE.trading:
            return ExitCode.UNSAFE, [
                f"error: venue: {detail} (after trading started: run `legguard recover` once the venue answers)"
            ]
        return ExitCode.VENUE, [f"error: venue: {detail} (nothing was sent)"]
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.UNSAFE, ["error: interrupted"]
    message = one_line(str(exc))
    hint = "" if STATE.debug else "; rerun with --debug for the traceback"
    return ExitCode.UNSAFE, [f"error: internal error {type(exc).__name__}: {message} (a bug{hint})"]


def fail(exc: BaseException, whole: BaseException | None = None) -> NoReturn:
    """Print the error that matters (one line each) and exit with its code; the traceback (of the whole
    group, when the error came out of one) only with --debug."""
    if STATE.debug:
        traceback.print_exception(whole or exc, file=sys.stderr)
    code, lines = describe(exc)
    for line in lines:
        print(line, file=sys.stderr)
    raise typer.Exit(int(code))


class EdgeGroup(TyperGroup):
    """The root command group: every command's errors pass through `invoke` here, and only here."""

    def invoke(self, ctx: Any) -> Any:
        STATE.trading = False
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except BaseException as exc:
            if isinstance(exc, typer.TyperException | SystemExit):
                raise  # click's usage errors: it prints the usage line and exits 2
            leaf = the_error(exc)
            if leaf is not exc and isinstance(leaf, typer.Exit | typer.Abort | typer.TyperException):
                raise leaf from None  # a command's own exit (or usage error) from inside a nursery
            fail(leaf, exc)
