"""The ``resilient-connect`` command line: wait until services are ready, then exec.

::

    resilient-connect wait TARGET... [options] [-- COMMAND ARGS...]
    resilient-connect check TARGET... [options]

``wait`` probes every target concurrently (one thread each, so the total time
is the slowest target's, and signals stay with the main thread), then
replaces itself with COMMAND through ``os.execvp``: the application keeps the
process id and receives signals directly, as an entrypoint's ``exec`` would.
``check`` makes one attempt per target, for container health checks.

Exit codes: 0 ready, 1 gave up on transient failures, 2 usage error, 3
permanent failure (authentication, unknown database...), 126/127 the command
cannot be run / was not found, 130 Ctrl-C, 143 SIGTERM. With several failing
targets the most severe code wins (3 over 1).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from .._errors import RetryExhausted, gave_up_line
from .._policy import Backoff, PolicyError, parse_field
from .._redact import Redactor
from .._version import __version__
from ._output import PERMANENT_EXIT, PROG, Reporter, choose_mode
from ._probes import NotReady, Target, TargetError, parse_target

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import NoReturn

    from .._budget import RetryBudget
    from .._events import Event

EXIT_READY = 0
EXIT_GAVE_UP = 1
EXIT_USAGE = 2
EXIT_PERMANENT = PERMANENT_EXIT
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

#: ``check`` answers quickly unless told otherwise: a health check has its own timeout.
CHECK_TIMEOUT = 10.0
#: ``wait`` caps one delay at 1 s instead of the library's 5 s: a service is noticed, on
#: average, about a third of the cap after it comes up (full jitter). Measured with
#: PostgreSQL and Redis starting 2 s and 3 s late, the command ran a median 0.5 s (at
#: most 0.74 s) after the slower one was ready with a 1 s cap, against 1.3-2.9 s (at most
#: 4.8 s) with 5 s. One waiting container costs a server about two connection attempts a
#: second, and a start-up wait ends at its deadline anyway.
WAIT_MAXIMUM = 1.0
#: The variable that gives ``wait`` a retry budget when ``--retry-budget`` is not given.
BUDGET_VARIABLE = "RESILIENT_CONNECT_RETRY_BUDGET"
_TICK = 0.25
# Backoff field -> argparse destination of the option that sets it.
_DEST_FOR_FIELD = {
    "initial": "initial",
    "maximum": "max_delay",
    "attempts": "attempts",
    "timeout": "timeout",
    "jitter": "jitter",
}

# Replaced in tests; looked up at call time.
_execvp: Callable[[str, list[str]], object] = os.execvp


class UsageError(Exception):
    """The command line cannot be run as given; the message is one redacted line."""


class _Stopped(BaseException):
    """Raised in a probe thread, from its hook, once the outcome is decided without it."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are exceptions, so ``main`` can print one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


# ---------------------------------------------------------------------------- parsing
# Policy options are kept as text here and parsed by the policy's own parser (the one
# ``Backoff.from_env`` uses), so ``--timeout null`` and ``RESILIENT_CONNECT_TIMEOUT=null``
# mean the same thing.
def _add_common(parser: argparse.ArgumentParser, *, policy: bool) -> None:
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="postgresql://, postgres://, postgresql+DRIVER://, redis://, rediss://, "
        "tcp://HOST:PORT, http:// or https:// URL, or a libpq key=value string such as "
        "'host=db dbname=app user=app' (one argument). Targets with a password: use --env, "
        "since arguments are visible to other users (ps)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="VAR",
        help="also wait for the target held in environment variable VAR (repeatable)",
    )
    parser.add_argument(
        "--timeout",
        default=argparse.SUPPRESS,
        metavar="S",
        help="overall deadline in seconds, or 'none' (default: RESILIENT_CONNECT_TIMEOUT, "
        + ("else 60)" if policy else f"else {CHECK_TIMEOUT:g})"),
    )
    if policy:
        parser.add_argument(
            "--initial",
            default=argparse.SUPPRESS,
            metavar="S",
            help="first delay in seconds (default 0.1)",
        )
        parser.add_argument(
            "--max-delay",
            default=argparse.SUPPRESS,
            metavar="S",
            help=f"cap on one delay in seconds (default: RESILIENT_CONNECT_MAXIMUM, "
            f"else {WAIT_MAXIMUM:g})",
        )
        parser.add_argument(
            "--attempts",
            default=argparse.SUPPRESS,
            metavar="N",
            help="most attempts per target, or 'none'",
        )
        parser.add_argument(
            "--jitter",
            default=argparse.SUPPRESS,
            metavar="KIND",
            help="none, full (default), equal, decorrelated, or a fraction such as 0.2",
        )
        parser.add_argument(
            "--retry-budget",
            default=argparse.SUPPRESS,
            metavar="N",
            help="most failed retries of all targets together, or 'none' (default: "
            f"{BUDGET_VARIABLE}, else none); giving up on it exits 1",
        )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("-q", "--quiet", action="store_true", help="print failures only")
    output.add_argument(
        "--json", action="store_true", help="one JSON object per event and outcome, on stderr"
    )


def build_parser() -> tuple[_Parser, dict[str, _Parser]]:
    """The top-level parser and its ``wait`` / ``check`` sub-parsers."""
    parser = _Parser(
        prog=PROG,
        description="Wait until PostgreSQL, Redis, TCP and HTTP services are ready, then exec.",
        epilog="Exit codes: 0 ready, 1 gave up (transient failures), 2 usage error, "
        "3 permanent failure, 126/127 command not runnable/not found, 130/143 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    wait = sub.add_parser(
        "wait",
        help="wait until every target is ready, then run COMMAND (given after --)",
        description="Wait until every target is ready (concurrently), then exec COMMAND. "
        "Policy defaults come from RESILIENT_CONNECT_* variables.",
        usage=f"{PROG} wait TARGET... [options] [-- COMMAND ARGS...]",
    )
    _add_common(wait, policy=True)
    check = sub.add_parser(
        "check",
        help="try each target once (for container health checks)",
        description="Try each target once; exit 0 if all are ready.",
        usage=f"{PROG} check TARGET... [options]",
    )
    _add_common(check, policy=False)
    return parser, {"wait": wait, "check": check}


class Request:
    """A parsed, validated command line."""

    __slots__ = ("action", "as_json", "budget", "command", "policy", "quiet", "targets")

    def __init__(
        self,
        action: str,
        targets: list[Target],
        policy: Backoff,
        command: list[str],
        *,
        quiet: bool,
        as_json: bool,
        budget: RetryBudget | None = None,
    ) -> None:
        self.action = action
        self.targets = targets
        self.policy = policy
        #: Shared by every target's loop (``--retry-budget``), or ``None``.
        self.budget = budget
        self.command = command
        self.quiet = quiet
        self.as_json = as_json


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> Request:
    """Parse and validate ``argv``; raise :class:`UsageError` (or ``SystemExit`` for --help)."""
    args = list(argv)
    command: list[str] = []
    if "--" in args:
        split = args.index("--")
        args, command = args[:split], args[split + 1 :]
    parser, subparsers = build_parser()
    if not args or args[0] not in subparsers:
        if args and not args[0].startswith("-"):
            msg = f"{PROG}: unknown command {args[0]!r}: expected 'wait' or 'check'"
            raise UsageError(msg + f" (see '{PROG} --help')")
        parser.parse_args(args)  # --help, --version, or an error
        msg = f"{PROG}: missing command: expected 'wait' or 'check' (see '{PROG} --help')"
        raise UsageError(msg)
    action = args[0]
    sub = subparsers[action]
    options = sub.parse_intermixed_args(args[1:])
    if action == "check" and command:
        msg = f"{sub.prog}: a COMMAND after -- is only run by 'wait'"
        raise UsageError(msg)
    if "--" in argv and not command:
        msg = f"{sub.prog}: nothing after --: give the command to run, or drop the --"
        raise UsageError(msg)
    raw_targets = list(options.targets)
    for variable in options.env:
        value = environ.get(variable, "").strip()
        if not value:
            msg = f"{sub.prog}: --env {variable}: the environment variable is not set or empty"
            raise UsageError(msg)
        raw_targets.append(value)
    if not raw_targets:
        msg = f"{sub.prog}: no targets: give TARGET... or --env VAR (see '{sub.prog} --help')"
        raise UsageError(msg)
    try:
        targets = [parse_target(raw) for raw in raw_targets]
    except TargetError as exc:
        raise UsageError(f"{sub.prog}: {exc}") from None
    policy = _policy(action, options, environ, sub.prog)
    budget = _budget(action, options, environ, sub.prog)
    return Request(
        action,
        targets,
        policy,
        command,
        quiet=options.quiet,
        as_json=options.json,
        budget=budget,
    )


def _budget(
    action: str, options: argparse.Namespace, environ: Mapping[str, str], prog: str
) -> RetryBudget | None:
    """The budget ``--retry-budget`` (or its variable) asks for: N failed retries in all.

    One token per retry and nothing back for a success: the targets of one command line
    share N retries, whichever target needs them. ``check`` makes no retries.
    """
    if hasattr(options, "retry_budget"):
        raw, source = options.retry_budget, "--retry-budget"
    else:
        raw, source = environ.get(BUDGET_VARIABLE, "").strip(), BUDGET_VARIABLE
        if not raw:
            return None
    text = str(raw).strip()
    if action == "check" or text.lower() in {"none", "null"}:
        return None
    try:
        retries = int(text)
    except ValueError:
        retries = -1
    if retries < 1:
        msg = f"{prog}: {source}={text!r}: expected a whole number of retries >= 1, or 'none'"
        if retries == 0:
            msg += " (for no retries at all, use --attempts 1)"
        raise UsageError(msg)
    from .._budget import RetryBudget

    return RetryBudget(capacity=retries, retry_cost=1, success_refund=0, hold=0)


def _policy(
    action: str, options: argparse.Namespace, environ: Mapping[str, str], prog: str
) -> Backoff:
    base = Backoff(maximum=WAIT_MAXIMUM) if action == "wait" else Backoff(timeout=CHECK_TIMEOUT)
    try:
        policy = Backoff.from_env(base=base, environ=environ)
    except ValueError as exc:
        raise UsageError(f"{prog}: {exc}") from None
    changes: dict[str, object] = {}
    for field, dest in _DEST_FOR_FIELD.items():
        if hasattr(options, dest):  # absent unless given
            raw = getattr(options, dest)
            try:
                changes[field] = parse_field(field, raw, source=_option(dest))
            except ValueError as exc:
                raise UsageError(f"{prog}: {exc}") from None
    if action == "check":
        changes["attempts"] = 1
    try:
        return policy.replace(**changes)
    except PolicyError as exc:
        named = _DEST_FOR_FIELD.get(exc.field)
        option = _option(named) if named else f"Backoff.{exc.field}"
        detail = str(exc).partition(": ")[2] or str(exc)
        raise UsageError(f"{prog}: {option}: {detail}") from None


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


# ---------------------------------------------------------------------------- waiting
class _Outcome:
    __slots__ = ("code", "elapsed", "index", "text")

    def __init__(self, index: int, code: int, text: str, elapsed: float) -> None:
        self.index = index
        self.code = code
        self.text = text
        self.elapsed = elapsed


class _Waiter:
    """Probes every target in its own thread and collects the outcomes.

    Threads, not asyncio: the drivers' sync connects are what the adapters
    bound and classify best, and the main thread stays free to receive
    SIGTERM / Ctrl-C while the probes block. Probe threads are daemons, so a
    probe stuck in a driver never keeps the process alive once the outcome is
    decided; their hooks raise :class:`_Stopped` at the next event after that.
    """

    def __init__(self, request: Request, reporter: Reporter) -> None:
        self.request = request
        self.reporter = reporter
        self.stop = threading.Event()
        # Reentrant: interrupt() runs in a signal handler, maybe while the main thread holds it.
        self.done = threading.Condition(threading.RLock())
        self.outcomes: list[_Outcome] = []
        self.interrupted: int | None = None

    def interrupt(self, code: int) -> None:
        """End the wait with exit ``code`` (called from a signal handler in the main thread).

        Setting a flag instead of raising keeps every lock balanced: an exception raised
        by a handler between a lock's acquisition and its ``with`` block would leak it.
        """
        with self.done:
            if self.interrupted is None:
                self.interrupted = code
            self.done.notify_all()

    def run(self) -> int:
        """Probe all targets at once; return the most severe exit code, or the interrupt's."""
        threads = [
            threading.Thread(
                target=self._probe,
                args=(index, target),
                name=f"resilient-connect-probe-{index}",
                daemon=True,
            )
            for index, target in enumerate(self.request.targets)
        ]
        seen = 0
        worst = EXIT_READY
        try:  # a signal may arrive as soon as the first probe runs: stop them all then too
            for thread in threads:
                thread.start()
            while seen < len(threads):
                with self.done:
                    if len(self.outcomes) == seen and self.interrupted is None:
                        self.done.wait(_TICK)
                    fresh = self.outcomes[seen:]
                if self.interrupted is not None:
                    return self.interrupted
                seen += len(fresh)
                for outcome in fresh:
                    self._report(outcome)
                    worst = max(worst, outcome.code)
                if worst == EXIT_PERMANENT:
                    break  # nothing the other targets do can change the outcome
                self.reporter.tick()
        finally:
            self.stop.set()
        return worst

    def _report(self, outcome: _Outcome) -> None:
        if outcome.code == EXIT_READY:
            self.reporter.ready(outcome.index, outcome.elapsed)
        else:
            self.reporter.failed(outcome.index, outcome.code, outcome.text, outcome.elapsed)

    def _probe(self, index: int, target: Target) -> None:
        reporter, stop = self.reporter, self.stop

        def hook(event: Event) -> None:
            if stop.is_set():
                raise _Stopped
            reporter.event(index, event)

        start = time.monotonic()
        try:
            target.wait(self.request.policy, [hook], self.request.budget)
        except _Stopped:
            return
        except RetryExhausted as exc:
            text = _gave_up_text(exc, self.request)
            outcome = _Outcome(index, EXIT_GAVE_UP, text, time.monotonic() - start)
        except NotReady as exc:
            outcome = _Outcome(index, EXIT_GAVE_UP, str(exc), time.monotonic() - start)
        except Exception as exc:  # noqa: BLE001 - a permanent error: report it, no traceback
            text = target.describe(exc)
            outcome = _Outcome(index, EXIT_PERMANENT, text, time.monotonic() - start)
        else:
            outcome = _Outcome(index, EXIT_READY, "", time.monotonic() - start)
        with self.done:
            self.outcomes.append(outcome)
            self.done.notify_all()


def _gave_up_text(exc: RetryExhausted, request: Request) -> str:
    if request.action == "check":
        return f"not ready: {exc.cause}"
    if request.budget is None:
        line = gave_up_line(exc.attempts, exc.elapsed, exc.reason, exc.nested)
    else:
        retries = int(request.budget.capacity)
        noun = "retry" if retries == 1 else "retries"
        advice = f"the {retries} {noun} of --retry-budget (or {BUDGET_VARIABLE}) are spent"
        line = gave_up_line(exc.attempts, exc.elapsed, exc.reason, budget_advice=advice)
    return f"{line}; last error: {exc.cause}"


# ---------------------------------------------------------------------------- exec
def _exec(command: list[str], reporter: Reporter) -> int:
    """Replace this process with ``command``; return an exit code only if that fails."""
    sys.stdout.flush()
    sys.stderr.flush()
    # Python ignores SIGPIPE and SIGXFSZ; an exec'd program would inherit "ignored".
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGPIPE", "SIGXFSZ"):
            number = getattr(signal, name, None)
            if number is not None:
                signal.signal(number, signal.SIG_DFL)
    try:
        _execvp(command[0], command)
    except FileNotFoundError:
        reporter.message(f"cannot run {command[0]!r}: command not found")
        return EXIT_NOT_FOUND
    except OSError as exc:
        reporter.message(f"cannot run {command[0]!r}: {exc.strerror or exc}")
        return EXIT_CANNOT_EXECUTE
    return EXIT_READY  # only reached when _execvp is replaced (tests)


def _command_problem(command: list[str], environ: Mapping[str, str]) -> tuple[int, str] | None:
    """Why ``command[0]`` cannot be run (exit code, reason), checked before waiting; or None.

    A name without ``/`` is looked up on PATH (``shutil.which`` only finds executable
    files); a path must exist, be a file and be executable.
    """
    import shutil

    name = command[0]
    if "/" not in name:
        if shutil.which(name, path=environ.get("PATH", os.defpath)) is None:
            return EXIT_NOT_FOUND, "command not found"
        return None
    if not os.path.exists(name):
        return EXIT_NOT_FOUND, "command not found"
    if os.path.isdir(name):
        return EXIT_CANNOT_EXECUTE, "Is a directory"
    if not os.access(name, os.X_OK):
        return EXIT_CANNOT_EXECUTE, "Permission denied"
    return None


# ---------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    ``wait`` with a command does not return when all targets are ready: the
    process becomes the command.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ)
    try:
        request = parse(args, environ)
    except UsageError as exc:
        _write_error(_scrub(str(exc), args))
        return EXIT_USAGE
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    mode = choose_mode(sys.stderr, quiet=request.quiet, as_json=request.as_json, environ=environ)
    labels = [target.label for target in request.targets]
    reporter = Reporter(sys.stderr, mode, labels, request.action)
    if request.command:
        unusable = _command_problem(request.command, environ)
        if unusable is not None:  # said at once, not after the whole wait
            reporter.message(f"cannot run {request.command[0]!r}: {unusable[1]}")
            return unusable[0]
    start = time.monotonic()
    code = _run_interruptibly(request, reporter)
    elapsed = time.monotonic() - start
    reporter.finish(code, _summary(request, code, elapsed), elapsed)
    if code == EXIT_READY and request.command:
        return _exec(request.command, reporter)
    return code


def _run_interruptibly(request: Request, reporter: Reporter) -> int:
    """Wait for the targets; SIGTERM and Ctrl-C end the wait at once with 143 / 130."""
    waiter = _Waiter(request, reporter)
    if threading.current_thread() is not threading.main_thread():
        return waiter.run()  # signal handlers can only be set in the main thread

    def on_sigterm(signum: int, frame: object) -> None:
        waiter.interrupt(EXIT_TERMINATED)

    def on_sigint(signum: int, frame: object) -> None:
        waiter.interrupt(EXIT_INTERRUPTED)

    handlers = {signal.SIGTERM: on_sigterm, signal.SIGINT: on_sigint}
    previous = {signum: signal.getsignal(signum) for signum in handlers}
    try:
        for signum, handler in handlers.items():
            if previous[signum] is not signal.SIG_IGN:  # ignored (a background job): keep it so
                signal.signal(signum, handler)
        code = waiter.run()
    finally:
        for signum, old in previous.items():
            # None: the previous handler was not set from Python; the default is closest.
            signal.signal(signum, signal.SIG_DFL if old is None else old)
    # A signal that came after the last target was ready still stops us before the exec.
    return code if waiter.interrupted is None else waiter.interrupted


def _summary(request: Request, code: int, elapsed: float) -> str:
    count = len(request.targets)
    noun = "target" if count == 1 else "targets"
    if code == EXIT_READY:
        what = "ready" if count == 1 else f"all {count} {noun} ready"
        return f"{what} in {elapsed:.2f}s" + (
            f"; running {request.command[0]}" if request.command else ""
        )
    if code == EXIT_TERMINATED:
        return f"terminated (SIGTERM) after {elapsed:.2f}s"
    if code == EXIT_INTERRUPTED:
        return f"interrupted after {elapsed:.2f}s"
    if code == EXIT_PERMANENT:
        return f"not ready: permanent failure after {elapsed:.2f}s (exit {code})"
    return f"not ready after {elapsed:.2f}s (exit {code})"


def _scrub(text: str, args: Sequence[str]) -> str:
    """Remove anything secret that any argument carried (argparse echoes arguments)."""
    for arg in args:
        if "://" in arg or "=" in arg or "@" in arg:
            text = Redactor(arg).scrub(text)
    return Redactor("").scrub(text)


def _write_error(text: str) -> None:
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
