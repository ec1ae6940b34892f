"""Events of pods, images and the host, for whoever listens (the API's Events stream)."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    kind: str  # pod, image or host
    action: str
    id: str
    name: str = ""
    details: dict[str, str] = field(default_factory=dict)
    time: float = field(default_factory=time.time)


class EventBus:
    """Fan-out of events to subscribers, each with a bounded queue: a subscriber that stops
    reading loses events (it is told so), it never slows the daemon down."""

    def __init__(self, backlog: int = 1000) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []
        self._backlog = backlog

    def publish(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.offer(event)

    def emit(self, kind: str, action: str, id_: str, name: str = "", **details: str) -> None:
        self.publish(Event(kind, action, id_, name, dict(details)))

    def subscribe(
        self, still_wanted: Callable[[], bool] | None = None, poll: float = 0.5
    ) -> Subscription:
        """Events from now on, until the subscription is closed (from any thread, which ends
        its iteration at once) or ``still_wanted()`` says stop (asked every ``poll``)."""
        subscription = Subscription(self, self._backlog, still_wanted, poll)
        with self._lock:
            self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._subscribers.remove(subscription)

    def close(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.close()


class Subscription:
    """One subscriber's events: iterate it in one thread; close it from any."""

    def __init__(
        self, bus: EventBus, backlog: int, still_wanted: Callable[[], bool] | None, poll: float
    ) -> None:
        self._bus = bus
        self._inbox: queue.Queue[Event | None] = queue.Queue(backlog)
        self._closed = threading.Event()
        self._still_wanted = still_wanted
        self._poll = poll

    def offer(self, event: Event) -> None:
        self._put(event)

    def close(self) -> None:
        self._closed.set()
        self._put(None)  # wakes the reader (a full inbox needs no waking: it looks at _closed)

    def _put(self, item: Event | None) -> None:
        with contextlib.suppress(queue.Full):  # this subscriber is not keeping up
            self._inbox.put_nowait(item)

    def __iter__(self) -> Iterator[Event]:
        try:
            while self._wanted():
                try:
                    event = self._inbox.get(timeout=self._poll)
                except queue.Empty:
                    continue
                if event is not None and not self._closed.is_set():
                    yield event
        finally:
            self._closed.set()
            self._bus.unsubscribe(self)

    def _wanted(self) -> bool:
        if self._closed.is_set():
            return False
        return self._still_wanted is None or self._still_wanted()
