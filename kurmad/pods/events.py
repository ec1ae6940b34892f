"""Events of pods, images and the host, for whoever listens (the API's Events stream)."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
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
        self._subscribers: list[queue.Queue[Event | None]] = []
        self._backlog = backlog

    def publish(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            with contextlib.suppress(queue.Full):  # this subscriber is not keeping up
                subscriber.put_nowait(event)

    def emit(self, kind: str, action: str, id_: str, name: str = "", **details: str) -> None:
        self.publish(Event(kind, action, id_, name, dict(details)))

    def subscribe(self, still_wanted: object = None, poll: float = 0.5) -> Iterator[Event]:
        """Events from now on, until ``still_wanted()`` says stop (checked every ``poll``)."""
        inbox: queue.Queue[Event | None] = queue.Queue(self._backlog)
        with self._lock:
            self._subscribers.append(inbox)
        try:
            while still_wanted is None or still_wanted():  # type: ignore[operator]
                try:
                    event = inbox.get(timeout=poll)
                except queue.Empty:
                    continue
                if event is None:
                    return
                yield event
        finally:
            with self._lock:
                self._subscribers.remove(inbox)

    def close(self) -> None:
        with self._lock:
            for subscriber in self._subscribers:
                with contextlib.suppress(queue.Full):
                    subscriber.put_nowait(None)
