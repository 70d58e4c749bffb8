"""A node process's own log (``node serve --log-level/--log-format``), on stderr."""

from __future__ import annotations

import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, node, id, logger, thread, msg (exc)."""

    def __init__(self, index: int, node_id: int):
        super().__init__()
        self.index = index
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": self.formatTime(record), "level": record.levelname,
               "node": self.index, "id": str(self.node_id), "logger": record.name,
               "thread": record.threadName, "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup(index: int, node_id: int, level: str, fmt: str) -> None:
    """Log the node process to stderr, each line naming the node; *fmt*: text | json."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(index, node_id))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s node-{index} id={node_id} %(threadName)s "
            f"%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
