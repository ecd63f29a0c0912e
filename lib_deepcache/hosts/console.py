"""Where the extension's log lines go: the host's own console.

The engine logs to the stdlib logger ``deepcache``. SD.Next prints through its own logger
(``modules.shared.log``, a rich console plus ``sdnext.log``) and leaves the root logger at ERROR
with a null handler, so an unrouted ``deepcache`` logger never reaches its console or log
file: there the logger shares SD.Next's handler list (the same list object, which SD.Next
refills in place when it resets its handlers). AUTOMATIC1111 and Forge print plain lines to
the terminal and configure no logging unless asked to: there the lines go to stdout, unless
the root logger has handlers (the user's, or another extension's ``basicConfig`` run later),
which then print them, once.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

logger = logging.getLogger("deepcache")


def route_to_host_console(host_log: Any = None) -> None:
    """``host_log``: SD.Next's ``shared.log`` (None on hosts without one). Idempotent."""
    if isinstance(host_log, logging.Logger):
        logger.handlers = host_log.handlers
        logger.propagate = False
        logger.setLevel(logging.INFO)
        return
    if any(isinstance(handler, _Console) for handler in logger.handlers):
        return
    handler = _Console(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


class _Console(logging.StreamHandler):
    """Prints only while the root logger has no handler of its own: in A1111 something calls
    ``logging.basicConfig`` after the extension loads, and each line then showed twice."""

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)
