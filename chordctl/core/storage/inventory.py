"""What is in a node directory: each snapshot and log with its counter, size,
time, record count, and whether recovery would use it."""

from __future__ import annotations

import os

from chordctl.core.storage import files, records, snapshot
from chordctl.errors import CorruptRecordError


def describe(directory: str) -> list[dict]:
    """One dict per file, snapshots then logs, ascending counters."""
    logs, snaps = files.list_counters(directory)
    out: list[dict] = []
    in_use_snap = None
    snap_docs = []
    for c in snaps:
        path = os.path.join(directory, files.snap_name(c))
        st = os.stat(path)
        doc = {"node_dir": directory, "file": files.snap_name(c), "kind": "snapshot",
               "counter": c, "bytes": st.st_size, "mtime": st.st_mtime, "records": None,
               "in_use": False, "status": "ok"}
        try:
            info = snapshot.read_info(path)
            doc["records"] = info.keys
        except CorruptRecordError as e:
            doc["status"] = f"corrupt: {e}"
        except OSError as e:      # not corruption: recovery refuses it, never skips it
            doc["status"] = f"unreadable: {e.strerror or e}"
        snap_docs.append(doc)
    # Recovery takes the newest snapshot that verifies; check from the newest.
    for doc in reversed(snap_docs):
        if doc["status"] != "ok":
            continue
        try:
            snapshot.read(os.path.join(directory, doc["file"]))
        except CorruptRecordError as e:
            doc["status"] = f"corrupt: {e}"
            continue
        except OSError as e:
            doc["status"] = f"unreadable: {e.strerror or e}"
            break
        doc["in_use"] = True
        in_use_snap = doc["counter"]
        break
    out.extend(snap_docs)
    base = in_use_snap or 0
    newest = logs[-1] if logs else None
    for c in logs:
        path = os.path.join(directory, files.log_name(c))
        st = os.stat(path)
        doc = {"node_dir": directory, "file": files.log_name(c), "kind": "log", "counter": c,
               "bytes": st.st_size, "mtime": st.st_mtime, "records": None,
               "in_use": c >= base, "status": "ok"}
        try:
            with open(path, "rb") as f:
                res = records.scan(f.read(), path, allow_torn=(c == newest))
            doc["records"] = len(res.records)
            if res.torn_bytes:
                doc["status"] = f"torn tail of {res.torn_bytes} bytes"
        except CorruptRecordError as e:
            doc["status"] = f"corrupt: {e}"
        except OSError as e:
            doc["status"] = f"unreadable: {e.strerror or e}"
        if c == newest:
            doc["current"] = True
        out.append(doc)
    return out
