"""Demo: wait for a TCP service that starts late, then give up on one that never starts.

No external service needed: the first "service" is a thread in this process that
starts listening on a loopback port three seconds after the program starts; the
second is a loopback port nothing listens on, named by a PostgreSQL URL with a
password (reached with a plain TCP connect) to show that the password is hidden.
Run it with ``python examples/demo.py`` and watch the log lines a user sees.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time

import resilient_connect as rc

STARTS_AFTER = 3.0


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def late_service(port: int) -> None:
    """Listen after STARTS_AFTER seconds and greet one client."""
    time.sleep(STARTS_AFTER)
    with socket.create_server(("127.0.0.1", port)) as server:
        client, _ = server.accept()
        with client:
            client.sendall(b"hello from a service that started late\n")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    port = free_loopback_port()
    threading.Thread(target=late_service, args=(port,), daemon=True).start()

    print(f"1) connecting to tcp://127.0.0.1:{port}, which starts in {STARTS_AFTER:.0f} s")
    started = time.monotonic()
    connection = rc.connect_with_retry(
        socket.create_connection,
        ("127.0.0.1", port),
        1.0,
        policy=rc.Backoff(initial=0.2, maximum=1.0, timeout=15),
        target=f"tcp://127.0.0.1:{port}",
    )
    with connection:
        greeting = connection.makefile().readline().strip()
    print(f"   connected after {time.monotonic() - started:.1f} s; the service said: {greeting!r}")

    dead_port = free_loopback_port()
    # A database URL names the target, as an application's DATABASE_URL would; the demo
    # still only opens a TCP connection to that port (no driver needed).
    url = f"postgresql://app:s3cret@127.0.0.1:{dead_port}/app"
    print(f"\n2) connecting to {rc.redact(url)}, which never starts (2 s deadline);")
    print("   a plain TCP connect to its port stands in for a PostgreSQL driver")
    try:
        rc.connect_with_retry(
            socket.create_connection,
            ("127.0.0.1", dead_port),
            1.0,
            policy=rc.Backoff(initial=0.2, maximum=1.0, timeout=2),
            target=url,
        )
    except rc.RetryExhausted as error:
        print(f"   RetryExhausted: {error}")
        print("   (the password in the URL is hidden in every line and message)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
