"""What is in a node directory: each snapshot and log with its counter, size,
time, record count, and whether recovery would use it.

Offline (``snapshot list --data-dir``) every file is read. A running node
(``Admin.Files``) passes a Cache, the log it is appending to and the
snapshots it knows to be whole, so a call costs a ``stat`` per file: a
snapshot or a closed log is read once (they never change; the cache keys
on size and mtime), the current log's record count comes from the node's
counters, and the snapshot the node wrote or loaded is not decoded again.
A file that vanishes meanwhile (pruned after a snapshot) is simply not in
the answer.
"""

from __future__ import annotations

import mmap
import os
import time
from typing import Iterable

from chordctl.core.storage import files, records, snapshot
from chordctl.errors import CorruptRecordError


class Cache:
    """What describe() learnt of files that do not change, by name.

    An entry holds while the file keeps its size and mtime: (stamp, doc,
    verified), verified being True/False once a snapshot was fully checked.
    """

    def __init__(self) -> None:
        self.entries: dict[str, tuple[tuple[int, int], dict, bool | None]] = {}


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _listed(directory: str, name: str, kind: str, counter: int,
            in_use: bool) -> tuple[dict, str, tuple[int, int]] | None:
    """One file's entry as stat finds it now (records and status still to read),
    its path and its (size, mtime_ns) stamp; None if it is gone."""
    path = os.path.join(directory, name)
    st = _stat(path)
    if st is None:
        return None
    doc = {"node_dir": directory, "file": name, "kind": kind, "counter": counter,
           "bytes": st.st_size, "mtime": st.st_mtime, "records": None, "in_use": in_use,
           "status": "ok"}
    return doc, path, (st.st_size, st.st_mtime_ns)


def _problem(e: Exception) -> str:
    if isinstance(e, CorruptRecordError):
        return f"corrupt: {e}"
    return f"unreadable: {getattr(e, 'strerror', None) or e}"


# Records between two yields of the GIL while a log is counted: a running node
# counts on an executor thread, and its request threads must not wait on it.
_YIELD_EVERY = 256


def count_records(path: str, allow_torn: bool) -> tuple[int, int]:
    """(records, torn tail bytes) of the log at *path*, checked as recovery
    would, without holding the file in memory: it is mapped, and its pages
    are the page cache's, not the process's."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return 0, 0
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    damage = None
    try:
        try:
            return _count(buf, path, allow_torn)
        except CorruptRecordError as e:
            # Raised again once the map is closed: the error's traceback holds
            # the scan's view of the map, which would keep it from closing.
            damage = (e.path, e.offset, e.reason)
    finally:
        try:
            buf.close()
        except BufferError:       # a view still alive: the map goes with it
            pass
        if damage is not None:
            raise CorruptRecordError(*damage)


def _count(buf, path: str, allow_torn: bool) -> tuple[int, int]:
    tail = records.Tail()
    n = 0
    pause = time.sleep
    for _ in records.iter_records(buf, path, allow_torn, tail):
        n += 1
        if n % _YIELD_EVERY == 0:
            pause(0)
    return n, tail.torn_bytes


def describe(directory: str, cache: Cache | None = None,
             current: tuple[int, int] | None = None,
             trusted: Iterable[int] = (), known: dict[int, int] | None = None) -> list[dict]:
    """One dict per file, snapshots then logs, ascending counters.

    *current*: (counter, records) of the log a running node appends to, so it
    is not scanned. *trusted*: counters of snapshots known whole (written or
    loaded by the node), so they are not decoded to tell which one is in use.
    *known*: counter -> records of closed logs the node replayed or wrote
    whole, so they are not read either.
    """
    known = known or {}
    logs, snaps = files.list_counters(directory)
    trusted = set(trusted)
    entries = cache.entries if cache is not None else {}
    seen: set[str] = set()
    out: list[dict] = []
    in_use_snap = None
    snap_docs: list[tuple[dict, tuple[int, int], bool | None]] = []
    for c in snaps:
        name = files.snap_name(c)
        listed = _listed(directory, name, "snapshot", c, False)
        if listed is None:
            continue
        doc, path, stamp = listed
        hit = entries.get(name)
        if hit is not None and hit[0] == stamp:
            snap_docs.append((dict(hit[1]), stamp, hit[2]))
            seen.add(name)
            continue
        try:
            doc["records"] = snapshot.read_info(path).keys
        except FileNotFoundError:
            continue
        except (CorruptRecordError, OSError) as e:
            doc["status"] = _problem(e)
        snap_docs.append((doc, stamp, False if doc["status"] != "ok" else None))
    # Recovery takes the newest snapshot that verifies; check from the newest.
    vanished = set()
    for k in range(len(snap_docs) - 1, -1, -1):
        doc, stamp, verified = snap_docs[k]
        if doc["status"] != "ok":
            continue
        if verified is None:
            if doc["counter"] in trusted:
                verified = True
            else:
                try:
                    snapshot.read(os.path.join(directory, doc["file"]))
                    verified = True
                except FileNotFoundError:
                    vanished.add(k)
                    continue
                except (CorruptRecordError, OSError) as e:
                    doc["status"] = _problem(e)
                    verified = False
            snap_docs[k] = (doc, stamp, verified)
        if verified:
            in_use_snap = doc["counter"]
            break
    for k, (doc, stamp, verified) in enumerate(snap_docs):
        if k in vanished:
            continue
        doc["in_use"] = doc["counter"] == in_use_snap
        if cache is not None:
            entries[doc["file"]] = (stamp, dict(doc, in_use=False), verified)
            seen.add(doc["file"])
        out.append(doc)
    base = in_use_snap or 0
    newest = logs[-1] if logs else None
    for c in logs:
        name = files.log_name(c)
        listed = _listed(directory, name, "log", c, c >= base)
        if listed is None:
            continue
        doc, path, stamp = listed
        if c == newest:
            doc["current"] = True
        if current is not None and c == current[0]:
            doc["records"] = current[1]     # appended to now: the node's count
            out.append(doc)
            continue
        if c in known and c != newest:
            doc["records"] = known[c]
            out.append(doc)
            continue
        hit = entries.get(name)
        if hit is not None and hit[0] == stamp:
            doc["records"], doc["status"] = hit[1]["records"], hit[1]["status"]
            seen.add(name)
            out.append(doc)
            continue
        try:
            doc["records"], torn = count_records(path, allow_torn=(c == newest))
            if torn:
                doc["status"] = f"torn tail of {torn} bytes"
        except FileNotFoundError:
            continue
        except (CorruptRecordError, OSError) as e:
            doc["status"] = _problem(e)
        if cache is not None and c != newest:   # the newest may still grow
            entries[name] = (stamp, {"records": doc["records"], "status": doc["status"]},
                             None)
            seen.add(name)
        out.append(doc)
    for name in list(entries):
        if name not in seen:
            del entries[name]
    return out
