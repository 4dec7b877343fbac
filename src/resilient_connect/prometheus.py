"""Export retries as Prometheus metrics: ``hook()`` returns the hook.

Needs the ``[prometheus]`` extra (``prometheus-client``), imported when
:func:`hook` is called. The metrics, as a scrape shows them:

* ``resilient_connect_attempts_total`` (counter): attempts that ended, labels
  ``outcome`` (``success``, ``retry``, ``gave_up``, ``not_retried``), ``rule``
  (the classification rule, empty for a success) and ``target`` (redacted);
* ``resilient_connect_attempt_duration_seconds`` (histogram): how long each
  attempt took, same labels;
* ``resilient_connect_backoff_duration_seconds`` (histogram): each wait
  scheduled before a retry, labels ``rule`` and ``target``.

No label has per-attempt values (no attempt number, no error text). The
metrics are registered once per registry: every hook built for the same
registry shares them.
"""

from __future__ import annotations

import threading
import weakref

from ._events import RetryScheduled
from ._exporting import DURATION_BUCKETS, missing_extra, outcome_of, rule_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from prometheus_client import CollectorRegistry, Counter, Histogram

    from ._events import Event

__all__ = ["PrometheusHook", "hook"]

ATTEMPTS = "resilient_connect_attempts"
ATTEMPT_DURATION = "resilient_connect_attempt_duration_seconds"
BACKOFF_DURATION = "resilient_connect_backoff_duration_seconds"

_LABELS = ("outcome", "rule", "target")


def hook(*, registry: CollectorRegistry | None = None, successes: bool = True) -> PrometheusHook:
    """A hook that counts every attempt and records durations in ``registry``.

    ``registry`` defaults to ``prometheus_client.REGISTRY`` (what
    ``start_http_server`` and ``make_wsgi_app`` expose). ``successes=True``
    also counts calls whose first attempt succeeded (``outcome="success"``),
    which costs a few microseconds per such call; ``False`` keeps the success
    path free and counts successes only after retries.
    """
    try:
        import prometheus_client
    except ImportError as exc:
        raise missing_extra("prometheus-client", "prometheus") from exc
    if registry is None:
        registry = prometheus_client.REGISTRY
    return PrometheusHook(_metrics_for(registry), successes=successes)


class _Metrics:
    """The three metrics of one registry."""

    __slots__ = ("attempt_duration", "attempts", "backoff")

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Histogram

        self.attempts: Counter = Counter(
            ATTEMPTS, "Attempts of retrying calls, by outcome.", _LABELS, registry=registry
        )
        self.attempt_duration: Histogram = Histogram(
            ATTEMPT_DURATION,
            "Duration of each attempt of a retrying call, in seconds.",
            _LABELS,
            registry=registry,
            buckets=DURATION_BUCKETS,
        )
        self.backoff: Histogram = Histogram(
            BACKOFF_DURATION,
            "Wait scheduled before each retry, in seconds.",
            ("rule", "target"),
            registry=registry,
            buckets=DURATION_BUCKETS,
        )


_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()
_registering = threading.Lock()


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    """The metrics of ``registry``, registered on first use (a second registration would fail)."""
    with _registering:
        metrics = _by_registry.get(registry)
        if metrics is None:
            metrics = _by_registry[registry] = _Metrics(registry)
        return metrics


class PrometheusHook:
    """The hook :func:`hook` returns; call it with an :class:`~resilient_connect.Event`.

    ``wants_successes`` tells the engine whether to send it
    :class:`~resilient_connect.Succeeded` events. Safe to share between
    threads, tasks and any number of retry loops.
    """

    __slots__ = ("_children", "_metrics", "wants_successes")

    def __init__(self, metrics: _Metrics, *, successes: bool = True) -> None:
        self.wants_successes = successes
        self._metrics = metrics
        # Labelled children by (outcome, rule, target): labels() costs more than a dict lookup.
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def __call__(self, event: Event) -> None:
        outcome = outcome_of(event)
        if outcome is None:
            return
        rule = rule_of(event)
        key = (outcome, rule, event.target)
        children = self._children.get(key)
        if children is None:
            metrics = self._metrics
            children = (metrics.attempts.labels(*key), metrics.attempt_duration.labels(*key))
            self._children[key] = children
        children[0].inc()
        children[1].observe(event.duration)
        if isinstance(event, RetryScheduled):
            self._metrics.backoff.labels(rule, event.target).observe(event.delay)
