"""A TCP fault-injection proxy on loopback, switchable between failure modes at run time.

One :class:`FaultProxy` owns one background thread running a ``selectors`` loop; every socket
is non-blocking and owned by that thread. Public methods post a command to the loop and wait
until it has been applied, so when ``proxy.refuse()`` returns the port really is closed.
``close()`` closes every socket and joins the thread: no threads or fds outlive the proxy.

Modes apply to connections accepted after the switch; live proxied sessions keep forwarding
until :meth:`FaultProxy.cut_all` (the delay setting applies to live sessions too).

Caveat: ``psycopg.pq.PGconn.ping()`` (libpq PQping) holds the GIL for its whole run and starves
this thread, so PQping through an in-process proxy falsely reports NO_RESPONSE. Run such probes
in a subprocess. ``psycopg.connect`` releases the GIL and is fine.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import selectors
import socket
import struct
import threading
import time
import types
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar, cast

from typing_extensions import Self

from .ports import HarnessError, Listening, check_loopback

__all__ = ["FaultProxy", "pg_fatal_response", "resp_error"]

T = TypeVar("T")
Mode = Literal["pass_through", "refuse", "blackhole", "reset", "replay"]

#: Connections above this many at once are reset on accept (keeps everything bounded).
MAX_CONNECTIONS = 256
#: Accept timestamps kept for :meth:`FaultProxy.accept_times` (the newest ones).
MAX_ACCEPT_TIMES = 100_000
#: Bytes buffered per direction before the proxy stops reading from the sender.
MAX_BUFFER = 4 * 1024 * 1024
_RECV_SIZE = 65536
_COMMAND_TIMEOUT = 10.0

# PostgreSQL pre-startup negotiation requests: length 8, then a magic "protocol version".
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
_GSSENC_REQUEST = struct.pack("!ii", 8, 80877104)


def pg_fatal_response(
    sqlstate: str, message: str, *, detail: str | None = None, severity: str = "FATAL"
) -> bytes:
    """A PostgreSQL ``ErrorResponse`` ('E') message as a server sends it during startup.

    Fields: S and V (severity, localised and not), C (SQLSTATE), M (message), optional D.
    Replayed after answering SSLRequest with ``N``, libpq reports it exactly like a real one,
    e.g. ``FATAL:  the database system is starting up`` for ``("57P03", ...)``.
    """
    if len(sqlstate) != 5:
        raise ValueError(f"SQLSTATE must have 5 characters, got {sqlstate!r}")
    fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", message)]
    if detail is not None:
        fields.append(("D", detail))
    body = b"".join(code.encode() + value.encode() + b"\0" for code, value in fields) + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


def resp_error(message: str) -> bytes:
    """A RESP error reply, e.g. ``resp_error("LOADING Redis is loading the dataset in memory")``."""
    return b"-" + message.encode() + b"\r\n"


@dataclass
class _Flow:
    """One direction of a proxied connection: bytes read from src, waiting for dst."""

    delayed: deque[tuple[float, bytes]] = field(default_factory=deque)
    out: bytearray = field(default_factory=bytearray)
    eof: bool = False  # the sender half-closed
    shut: bool = False  # we forwarded the half-close

    def buffered(self) -> int:
        return len(self.out) + sum(len(chunk) for _, chunk in self.delayed)


@dataclass(eq=False)
class _Conn:
    """A client connection and, in pass-through mode, its upstream connection."""

    client: socket.socket
    kind: Mode
    upstream: socket.socket | None = None
    connecting: bool = False
    connect_at: float | None = None  # when to open the upstream connection (connect delay)
    to_up: _Flow = field(default_factory=_Flow)
    to_client: _Flow = field(default_factory=_Flow)
    # replay mode
    inbox: bytearray = field(default_factory=bytearray)
    answered: bool = False
    closed: bool = False


class FaultProxy(Listening):
    """TCP proxy from ``(host, port)`` to *upstream* with switchable faults.

    Modes (each method returns once the loop applied it):

    - :meth:`pass_through` - forward both ways (also clears any delay).
    - :meth:`refuse` - close the listener: connects fail with ``ConnectionRefusedError``.
      Any other mode re-opens the same port (SO_REUSEADDR).
    - :meth:`blackhole` - accept, read and discard, never answer, never close.
    - :meth:`reset` - accept, then close with SO_LINGER 0: the client gets a RST.
    - :meth:`delay` - forward with added latency per direction and/or before connecting
      upstream.
    - :meth:`late_start` - stop listening now and listen again (pass-through) after N seconds.
    - :meth:`replay` - accept, wait for the client to send something, answer with fixed bytes
      (optionally answering PostgreSQL's SSLRequest/GSSENCRequest with ``N`` first), close.
    - :meth:`cut_all` - close every live connection now (FIN, or RST with ``abortive=True``).

    If the upstream refuses, the client connection is reset. With ``listen=False`` the proxy
    starts in ``refuse`` mode but has already reserved its port. While refusing, another
    process could in principle take the port; re-opening then raises HarnessError.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        listen: bool = True,
    ) -> None:
        self._upstream = (check_loopback(upstream[0]), int(upstream[1]))
        self._host = check_loopback(host)
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._port = port
        self._mode: Mode = "pass_through"
        self._data_delay = 0.0
        self._connect_delay = 0.0
        self._replay_bytes = b""
        self._replay_pg = False
        self._replay_close = True
        self._listen_at: float | None = None
        self._listener: socket.socket | None = None
        self._conns: set[_Conn] = set()
        self._accepted = 0
        self._accept_times: deque[float] = deque(maxlen=MAX_ACCEPT_TIMES)
        self._commands: queue.SimpleQueue[tuple[Callable[[], object], _Reply]] = queue.SimpleQueue()
        self._stopping = False
        self._error: BaseException | None = None
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._closed = False
        try:
            # Bind in the caller's thread so that a busy port fails here, and so that the
            # port is known (and stable) from now on even if we do not listen yet.
            self._open_listener()
            if not listen:
                self._close_listener()
                self._mode = "refuse"
        except BaseException:
            self._release_base()
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"FaultProxy:{self._port}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ public API
    @property
    def upstream(self) -> tuple[str, int]:
        return self._upstream

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def accepted(self) -> int:
        """How many client connections were accepted so far (all modes)."""
        return self._call(lambda: self._accepted)

    def accept_times(self) -> list[float]:
        """``time.monotonic()`` of each accepted connection, oldest first (the last 100,000).

        Benchmarks bin these to count connection attempts per interval at the proxy.
        """
        return self._call(lambda: list(self._accept_times))

    @property
    def active_connections(self) -> int:
        """How many client connections are open right now (all modes)."""
        return self._call(lambda: len(self._conns))

    @property
    def listening(self) -> bool:
        return self._call(lambda: self._listener is not None)

    def pass_through(self) -> None:
        """Forward everything, no delay."""
        self._call(lambda: self._set_mode("pass_through", data_delay=0.0, connect_delay=0.0))

    def refuse(self) -> None:
        """Close the listening socket: nothing listens on the port until another mode."""
        self._call(lambda: self._set_mode("refuse"))

    def blackhole(self) -> None:
        """New connections are accepted and then ignored: no answer, no close."""
        self._call(lambda: self._set_mode("blackhole"))

    def reset(self) -> None:
        """New connections are accepted and immediately reset (RST via SO_LINGER 0)."""
        self._call(lambda: self._set_mode("reset"))

    def delay(self, data: float = 0.0, *, connect: float = 0.0) -> None:
        """Forward with *data* seconds of added latency in each direction, and wait *connect*
        seconds after accepting before connecting upstream (the client sees silence)."""
        if data < 0 or connect < 0:
            raise ValueError("delays must be >= 0")
        self._call(lambda: self._set_mode("pass_through", data_delay=data, connect_delay=connect))

    def late_start(self, seconds: float) -> None:
        """Stop listening now; start listening (pass-through) *seconds* from now."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self._call(lambda: self._set_mode("pass_through", listen_in=seconds))

    def replay(
        self, response: bytes, *, answer_pg_negotiation: bool = False, close: bool = True
    ) -> None:
        """Answer each new connection's first request with *response*, then close (FIN).

        With *answer_pg_negotiation*, SSLRequest and GSSENCRequest get ``N`` first, as a
        server without TLS answers; pair it with :func:`pg_fatal_response`.
        """

        def apply() -> None:
            self._replay_bytes = bytes(response)
            self._replay_pg = answer_pg_negotiation
            self._replay_close = close
            self._set_mode("replay")

        self._call(apply)

    def replay_pg_fatal(self, sqlstate: str, message: str, *, detail: str | None = None) -> None:
        """Shorthand: answer every PostgreSQL connect with ``FATAL <sqlstate> <message>``."""
        self.replay(pg_fatal_response(sqlstate, message, detail=detail), answer_pg_negotiation=True)

    def cut_all(self, *, abortive: bool = False) -> int:
        """Close every live connection (both sides) now; return how many were cut.

        Default is an orderly close (FIN, like a crashed server process); ``abortive=True``
        sends RST instead (like a middlebox dropping state).
        """

        def apply() -> int:
            conns = list(self._conns)
            for conn in conns:
                self._close_conn(conn, abortive=abortive)
            return len(conns)

        return self._call(apply)

    def set_upstream(self, upstream: tuple[str, int]) -> None:
        """Forward new connections to another (loopback) address, e.g. a promoted replica."""
        target = (check_loopback(upstream[0]), int(upstream[1]))

        def apply() -> None:
            self._upstream = target

        self._call(apply)

    def wait_for_connections(self, count: int = 1, timeout: float = 10.0) -> None:
        """Poll until at least *count* client connections are open."""
        deadline = time.monotonic() + timeout
        while self.active_connections < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {count} connections after {timeout} s")
            time.sleep(0.005)

    def close(self) -> None:
        """Close every socket and join the thread; idempotent. Re-raises a loop crash."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        self._wake()
        self._thread.join(_COMMAND_TIMEOUT)
        if self._thread.is_alive():
            raise HarnessError("FaultProxy thread did not stop")
        self._release_base()
        if self._error is not None:
            raise HarnessError("FaultProxy loop crashed") from self._error

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FaultProxy {self._host}:{self._port} -> {self._upstream} {self._mode}>"

    # ------------------------------------------------------------------ plumbing
    def _call(self, func: Callable[[], T]) -> T:
        """Run *func* on the loop thread and return its result (or raise its exception)."""
        if self._closed:
            raise HarnessError("the proxy is closed")
        if self._error is not None:
            raise HarnessError("FaultProxy loop crashed") from self._error
        reply = _Reply()
        self._commands.put((func, reply))
        self._wake()
        if not reply.done.wait(_COMMAND_TIMEOUT):
            raise HarnessError("FaultProxy loop did not answer") from self._error
        if reply.error is not None:
            raise reply.error
        return cast("T", reply.value)  # set from func(), so it is a T

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _release_base(self) -> None:
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._listener = None
        self._sel.close()

    def _set_mode(
        self,
        mode: Mode,
        *,
        data_delay: float | None = None,
        connect_delay: float | None = None,
        listen_in: float | None = None,
    ) -> None:
        self._mode = mode
        if data_delay is not None:
            self._data_delay = data_delay
        if connect_delay is not None:
            self._connect_delay = connect_delay
        self._listen_at = None
        if mode == "refuse":
            self._close_listener()
        elif listen_in is not None:
            self._close_listener()
            self._listen_at = time.monotonic() + listen_in
            if listen_in == 0:
                self._open_listener()
                self._listen_at = None
        elif self._listener is None:
            self._open_listener()

    def _open_listener(self) -> None:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise HarnessError(f"cannot listen on {self._host}:{self._port}: {exc}") from exc
        self._port = sock.getsockname()[1]
        self._listener = sock
        self._sel.register(sock, selectors.EVENT_READ, None)

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        try:
            while not self._stopping:
                events = self._sel.select(self._next_timeout())
                for key, mask in events:
                    if key.fileobj is self._wake_r:
                        self._drain_wake()
                    elif key.fileobj is self._listener:
                        self._accept()
                    else:
                        conn, is_client = key.data
                        self._on_event(conn, is_client=is_client, mask=mask)
                self._run_commands()
                self._tick()
        except BaseException as exc:  # reported to the caller by close()
            self._error = exc
        finally:
            for conn in list(self._conns):
                self._close_conn(conn, abortive=True)
            self._close_listener()
            # Unblock callers still waiting on a command.
            while not self._commands.empty():
                _, reply = self._commands.get_nowait()
                reply.error = HarnessError("the proxy is closed")
                reply.done.set()

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def _run_commands(self) -> None:
        while True:
            try:
                func, reply = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                reply.value = func()
            except Exception as exc:  # re-raised in the calling thread
                reply.error = exc
            reply.done.set()

    def _next_timeout(self) -> float | None:
        deadlines: list[float] = []
        if self._listen_at is not None:
            deadlines.append(self._listen_at)
        for conn in self._conns:
            if conn.connect_at is not None:
                deadlines.append(conn.connect_at)
            deadlines.extend(f.delayed[0][0] for f in (conn.to_up, conn.to_client) if f.delayed)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def _tick(self) -> None:
        """Timers, delayed data, flushing and selector interest, after each select()."""
        now = time.monotonic()
        if self._listen_at is not None and now >= self._listen_at:
            self._listen_at = None
            if self._listener is None:
                self._open_listener()
        for conn in list(self._conns):
            if conn.connect_at is not None and now >= conn.connect_at:
                conn.connect_at = None
                self._connect_upstream(conn)
            if not conn.closed:
                self._pump(conn, now)

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(64):
            try:
                client, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            client.setblocking(False)
            self._accepted += 1
            self._accept_times.append(time.monotonic())
            if self._mode == "reset" or len(self._conns) >= MAX_CONNECTIONS:
                _abort(client)
                continue
            conn = _Conn(client=client, kind=self._mode)
            self._conns.add(conn)
            if conn.kind == "pass_through":
                if self._connect_delay > 0:
                    conn.connect_at = time.monotonic() + self._connect_delay
                else:
                    self._connect_upstream(conn)
            self._update_interest(conn)

    def _connect_upstream(self, conn: _Conn) -> None:
        family = socket.AF_INET6 if ":" in self._upstream[0] else socket.AF_INET
        upstream = socket.socket(family, socket.SOCK_STREAM)
        upstream.setblocking(False)
        conn.upstream = upstream
        err = upstream.connect_ex(self._upstream)
        if err == 0:
            conn.connecting = False
        elif err in _IN_PROGRESS:
            conn.connecting = True
        else:
            self._close_conn(conn, abortive=True)
            return
        self._update_interest(conn)

    def _on_event(self, conn: _Conn, *, is_client: bool, mask: int) -> None:
        if conn.closed:
            return
        try:
            if not is_client and conn.connecting:
                assert conn.upstream is not None
                if conn.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                    # Upstream refused: reset the client, like a dead server behind a NAT.
                    self._close_conn(conn, abortive=True)
                    return
                conn.connecting = False
            if mask & selectors.EVENT_READ:
                self._on_readable(conn, is_client=is_client)
        except OSError:
            self._close_conn(conn, abortive=True)

    def _on_readable(self, conn: _Conn, *, is_client: bool) -> None:
        sock = conn.client if is_client else conn.upstream
        assert sock is not None
        try:
            data = sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        if conn.kind == "blackhole":
            if not data:
                self._close_conn(conn, abortive=False)
            return
        if conn.kind == "replay":
            self._on_replay_data(conn, data)
            return
        flow = conn.to_up if is_client else conn.to_client
        if not data:
            flow.eof = True
        elif self._data_delay > 0:
            flow.delayed.append((time.monotonic() + self._data_delay, data))
        else:
            flow.out += data

    def _on_replay_data(self, conn: _Conn, data: bytes) -> None:
        if not data:
            self._close_conn(conn, abortive=False)
            return
        if conn.answered:
            return  # draining whatever the client sends after the answer
        conn.inbox += data
        if self._replay_pg and len(conn.inbox) < 8:
            return  # wait for a whole negotiation request
        if self._replay_pg and bytes(conn.inbox[:8]) in {_SSL_REQUEST, _GSSENC_REQUEST}:
            del conn.inbox[:8]
            conn.to_client.out += b"N"
            if not conn.inbox:
                return
        conn.answered = True
        conn.to_client.out += self._replay_bytes

    def _pump(self, conn: _Conn, now: float) -> None:
        """Release due delayed data, send what can be sent, forward half-closes."""
        pairs = [(conn.to_client, conn.client)]
        if conn.upstream is not None and not conn.connecting:
            pairs.append((conn.to_up, conn.upstream))
        try:
            for flow, dst in pairs:
                while flow.delayed and flow.delayed[0][0] <= now:
                    flow.out += flow.delayed.popleft()[1]
                if flow.out:
                    try:
                        sent = dst.send(flow.out)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    del flow.out[:sent]
                if flow.eof and not flow.shut and not flow.out and not flow.delayed:
                    dst.shutdown(socket.SHUT_WR)
                    flow.shut = True
        except OSError:
            self._close_conn(conn, abortive=True)
            return
        if conn.kind == "pass_through" and conn.to_up.shut and conn.to_client.shut:
            self._close_conn(conn, abortive=False)
            return
        if (
            conn.kind == "replay"
            and conn.answered
            and self._replay_close
            and not conn.to_client.out
            and not conn.to_client.shut
        ):
            # Orderly close after the answer; keep reading until the client closes too, so
            # that unread client bytes do not turn our FIN into a RST.
            with contextlib.suppress(OSError):
                conn.client.shutdown(socket.SHUT_WR)
            conn.to_client.shut = True
        self._update_interest(conn)

    def _update_interest(self, conn: _Conn) -> None:
        if conn.closed:
            return
        client_events = 0
        # Blackhole and replay connections always read (and discard), so a client never
        # blocks on a full send buffer; forwarding reads only while there is room.
        forwarding_room = not conn.to_up.eof and conn.to_up.buffered() < MAX_BUFFER
        if conn.kind in {"blackhole", "replay"} or forwarding_room:
            client_events |= selectors.EVENT_READ
        if conn.to_client.out:
            client_events |= selectors.EVENT_WRITE
        self._set_events(conn.client, client_events, (conn, True))
        if conn.upstream is not None:
            up_events = 0
            if conn.connecting:
                up_events = selectors.EVENT_WRITE
            else:
                if not conn.to_client.eof and conn.to_client.buffered() < MAX_BUFFER:
                    up_events |= selectors.EVENT_READ
                if conn.to_up.out:
                    up_events |= selectors.EVENT_WRITE
            self._set_events(conn.upstream, up_events, (conn, False))

    def _set_events(self, sock: socket.socket, events: int, data: tuple[_Conn, bool]) -> None:
        try:
            key = self._sel.get_key(sock)
        except KeyError:
            if events:
                self._sel.register(sock, events, data)
            return
        if not events:
            self._sel.unregister(sock)
        elif key.events != events:
            self._sel.modify(sock, events, data)

    def _close_conn(self, conn: _Conn, *, abortive: bool) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        for sock in (conn.client, conn.upstream):
            if sock is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            if abortive:
                _abort(sock)
            else:
                sock.close()


class _Reply:
    """Result slot for a command run on the loop thread."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: object = None
        self.error: BaseException | None = None


_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY}


def _abort(sock: socket.socket) -> None:
    """Close with SO_LINGER 0 so the peer gets a RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
