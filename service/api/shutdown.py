"""Draining starts at the signal: /ready turns 503 the moment SIGTERM (or SIGINT) arrives.

The server (uvicorn) handles the signal itself: it stops accepting
connections, lets the requests in flight finish, and only then runs the
lifespan's shutdown, which stops the batchers and closes the collections.
`drain_on_signals` chains a handler in front of the server's, so the app is
marked as draining as soon as the signal arrives rather than once the last
request is done, and load balancers stop sending traffic meanwhile.

Signal handlers can only be set from the main thread; elsewhere (a test
client's thread) this does nothing.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _chain(previous: Handler, signum: int, frame: FrameType | None) -> None:
    """Do what the handler we replaced would have done."""
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
    # SIG_IGN or None (not set from Python): nothing more to do


def drain_on_signals(on_signal: Callable[[int], None]) -> Callable[[], None]:
    """Call `on_signal(signum)` first on SIGTERM and SIGINT, then the previous handler.

    Returns a function that puts the previous handlers back (where ours is still set).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    installed: dict[int, tuple[Handler, Callable[[int, FrameType | None], None]]] = {}
    for sig in DRAIN_SIGNALS:
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Handler = previous) -> None:
            try:
                on_signal(signum)
            finally:
                _chain(previous, signum, frame)

        signal.signal(sig, handler)
        installed[sig] = (previous, handler)

    def restore() -> None:
        for sig, (previous, handler) in installed.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)

    return restore
