"""Offline migration of a ring's data to another ring (``chordctl ring migrate``).

Every node of the old ring must be stopped. The migration

1. locks every old node directory (a running node holds its lock, so a ring
   still up is refused, naming the pid) and checks that each was written
   under the ``--from`` ring (its IDENTITY, its snapshot header, and every
   key in the node's arc);
2. reads each old node's state exactly as a restart would (newest valid
   snapshot, then its logs; nothing in the old directories is changed);
3. gives every key to the node that owns it under the new ring, and writes
   each new node's directory under a temporary name,
   ``<new data_dir>.migrating-<stamp>/node-<j>``: one fsynced, atomically
   renamed ``snap.1`` and the new IDENTITY, each directory locked;
4. puts the new ring in place with renames. With the same ``data_dir`` for
   both rings (the common case) the new tree and the old one are exchanged
   in one atomic ``renameat2(RENAME_EXCHANGE)`` where the kernel offers it
   (two renames otherwise) and the old ring is kept, whole, as
   ``<data_dir>.old-<stamp>``. With another ``data_dir`` the new tree is
   renamed into place and the old directories stay where they are.

Until step 4 the old ring is untouched: a crash (even ``kill -9``) leaves
only the ``.migrating-<stamp>`` tree, which a later run reports and never
reads. The whole data set is held in memory once while it is redistributed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import errno
import logging
import os
import time
from collections import Counter
from typing import Callable

from chordctl.config import Config
from chordctl.core.ring import Ring
from chordctl.core.storage import files, identity, recovery, snapshot
from chordctl.core.storage.identity import RingIdentity
from chordctl.core.storage.log import LogFile
from chordctl.core.storage.lock import DirectoryLock
from chordctl.core.store import Store
from chordctl.errors import ChordError, ConfigError, InvalidInputError, RingMismatchError
from chordctl.protocol import OP_CREATE

logger = logging.getLogger("chordctl.migrate")

STAGING = ".migrating-"
KEPT = ".old-"

# progress(phase, advance, total): "read" advances by one per old node read
# (total: old nodes), "write" by the keys of each new node written (total: keys).
Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class OldNode:
    index: int
    directory: str
    keys: int = 0
    moved_out: int = 0         # keys whose owner index changed
    snapshot: int | None = None
    records: int = 0
    torn_bytes: int = 0


@dataclasses.dataclass
class NewNode:
    index: int
    id: int
    arc: tuple[int, int]
    directory: str = ""
    keys: int = 0
    kept: int = 0              # keys that were already on the node of this index
    sources: dict[int, int] = dataclasses.field(default_factory=dict)   # old index -> keys

    @property
    def moved_in(self) -> int:
        return self.keys - self.kept


@dataclasses.dataclass
class MigrationReport:
    old_ring: RingIdentity
    new_ring: RingIdentity
    old_data_dir: str
    new_data_dir: str
    old_nodes: list[OldNode]
    new_nodes: list[NewNode]
    kept_at: str | None = None     # where the old ring now is (same data_dir)
    seconds: float = 0.0
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def keys(self) -> int:
        return sum(n.keys for n in self.new_nodes)

    @property
    def moved(self) -> int:
        return sum(n.moved_in for n in self.new_nodes)


def migrate(old: Config, new: Config, progress: Progress | None = None) -> MigrationReport:
    """Move the data of ring *old* (every node stopped) to ring *new*; see the module doc."""
    for which, cfg in (("--from", old), ("--to", new)):
        if cfg.ring.replicas > 1:
            raise ConfigError(
                f"ring migrate: the {which} config has ring.replicas {cfg.ring.replicas}; "
                f"{identity.COPY_HINT}. (To replace one lost replica, start it on an empty "
                f"directory: it catches up from the others.)")
    t0 = time.monotonic()
    step = progress or (lambda phase, advance, total: None)
    old_ring, new_ring = Ring.from_config(old), Ring.from_config(new)
    # node_dir() is where the nodes look (<data_dir>/node-<i>, resolved by config).
    old_data = os.path.realpath(os.path.dirname(old.node_dir(0)))
    new_data = os.path.realpath(os.path.dirname(new.node_dir(0)))
    same_dir = old_data == new_data
    report = MigrationReport(
        RingIdentity.of(old_ring, 0), RingIdentity.of(new_ring, 0), old_data, new_data,
        [OldNode(i, os.path.join(old_data, f"node-{i}")) for i in range(old_ring.n)],
        [NewNode(j, new_ring.ids[j], new_ring.arc(j)) for j in range(new_ring.n)])
    _check_layout(report, same_dir)
    for leftover in _leftovers(new_data):
        report.warnings.append(
            f"migrate: {leftover} was left by an interrupted migration (a partial new ring, "
            f"or the old one if it stopped right after the swap) and is not used; remove it "
            f"once you have checked that {new_data} is whole")

    locks: list[DirectoryLock] = []
    staging = built = None
    swapping = False
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"
    try:
        for node in report.old_nodes:
            locks.append(DirectoryLock(node.directory).acquire())
        stores = [Store() for _ in range(new_ring.n)]
        for node in report.old_nodes:
            _read_old(node, old_ring, new_ring, stores, report)
            step("read", 1, old_ring.n)
        for node in report.old_nodes:
            node.moved_out = node.keys - report.new_nodes[node.index].kept \
                if node.index < new_ring.n else node.keys

        staging = new_data + STAGING + stamp
        files.makedirs_durable(os.path.dirname(new_data))
        total = report.keys
        pause = float(os.environ.get("CHORDCTL_TEST_MIGRATE_PAUSE") or 0)   # test hook
        for target, store in zip(report.new_nodes, stores):
            d = os.path.join(staging, f"node-{target.index}")
            files.makedirs_durable(d)
            locks.append(DirectoryLock(d).acquire())
            ident = RingIdentity.of(new_ring, target.index)
            # As a node does: log.1 exists before snap.1 (recovery refuses a
            # snapshot whose log is missing), empty, since snap.1 holds it all.
            LogFile(d, 1).close()
            snapshot.write(d, 1, 0, store.freeze(), pause_ratio=0, identity=ident)
            identity.write(d, ident, addresses=[n.address for n in new.nodes])
            target.directory = os.path.join(new_data, f"node-{target.index}")
            step("write", target.keys, total)
            if pause:
                time.sleep(pause)
        del stores
        files.fsync_dir(staging)

        # From here on the staging tree is the whole new ring (or, after the
        # exchange, the old one): never remove it, whatever happens.
        built, staging = staging, None
        swapping = True
        if same_dir:
            report.kept_at = old_data + KEPT + stamp
            _swap(built, old_data, report.kept_at)
            for node in report.old_nodes:
                node.directory = os.path.join(report.kept_at, f"node-{node.index}")
        else:
            os.rename(built, new_data)         # absent or empty: checked above
            files.fsync_dir(os.path.dirname(new_data))
    except OSError as e:
        where = (f"the new ring is complete in {built}; look at {old_data} and "
                 f"{old_data + KEPT + stamp} before you move anything"
                 if swapping else f"the old ring is untouched in {old_data}")
        raise ChordError(f"migrate: {e.filename or 'a file'}: {e.strerror}; {where}") from None
    finally:
        if staging is not None and os.path.isdir(staging):
            import shutil
            shutil.rmtree(staging, ignore_errors=True)
        for lk in locks:
            lk.release()
    report.seconds = time.monotonic() - t0
    logger.info("migrate: %d keys to %s in %.2fs, %d moved", report.keys, new_data,
                report.seconds, report.moved)
    return report


def _check_layout(report: MigrationReport, same_dir: bool) -> None:
    old_ring, new_ring = report.old_ring, report.new_ring
    if same_dir and (old_ring.bits, old_ring.placement, old_ring.nodes) == \
            (new_ring.bits, new_ring.placement, new_ring.nodes):
        raise InvalidInputError(
            f"migrate: --from and --to describe the same ring ({old_ring.nodes} node(s), "
            f"ring.bits {old_ring.bits}, ring.placement {old_ring.placement}) over the same "
            f"storage.data_dir {report.old_data_dir}; there is nothing to move (ring.routing "
            f"does not change where keys live)")
    if not same_dir and (_inside(report.new_data_dir, report.old_data_dir)
                         or _inside(report.old_data_dir, report.new_data_dir)):
        raise InvalidInputError(
            f"migrate: the --to storage.data_dir {report.new_data_dir} and the --from one "
            f"{report.old_data_dir} lie one inside the other; use the same data_dir (the old "
            f"ring is kept beside it) or two separate ones")
    for node in report.old_nodes:       # the clearest error first: another ring's data
        recorded = identity.read(node.directory) if os.path.isdir(node.directory) else None
        if recorded is not None and not recorded.adopted:
            diff = identity.differences(recorded.identity,
                                        dataclasses.replace(old_ring, index=node.index))
            if diff:
                raise _not_from(node.directory, recorded.identity, diff)
    for node in report.old_nodes:
        if not os.path.isdir(node.directory):
            raise InvalidInputError(
                f"migrate: {node.directory} (node {node.index} of --from) does not exist; is "
                f"--from the config the data was written under? (if node {node.index} never "
                f"held data, create the directory empty)")
    if same_dir:
        expected = {f"node-{i}" for i in range(old_ring.nodes)} | {files.CLUSTER_LOCK}
        extra = sorted(set(os.listdir(report.old_data_dir)) - expected)
        if extra:
            raise InvalidInputError(
                f"migrate: {report.old_data_dir} also holds {', '.join(extra[:5])}, which "
                f"{'is' if len(extra) == 1 else 'are'} not a node directory of the --from ring "
                f"({old_ring.nodes} node(s)); the migration replaces the whole data_dir, so move "
                f"{'it' if len(extra) == 1 else 'them'} out first")
    elif os.path.exists(report.new_data_dir) and (
            not os.path.isdir(report.new_data_dir) or os.listdir(report.new_data_dir)):
        raise InvalidInputError(
            f"migrate: the --to storage.data_dir {report.new_data_dir} already exists and is "
            f"not empty; give --to an unused data_dir, or the same one as --from to replace "
            f"the old ring in place")


def _inside(path: str, directory: str) -> bool:
    return os.path.commonpath([path, directory]) == directory


def _leftovers(new_data: str) -> list[str]:
    parent, base = os.path.split(new_data)
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(parent, n) for n in names if n.startswith(base + STAGING))


def _read_old(node: OldNode, old_ring: Ring, new_ring: Ring, stores: list[Store],
              report: MigrationReport) -> None:
    expected = RingIdentity.of(old_ring, node.index)
    recorded = identity.read(node.directory)
    adopted = False
    if recorded is not None:
        diff = identity.differences(recorded.identity, expected)
        if diff and not recorded.adopted:
            raise _not_from(node.directory, recorded.identity, diff)
        adopted = bool(diff)
    store = Store()
    rep = recovery.recover(node.directory, store)
    node.snapshot, node.records, node.torn_bytes = rep.snapshot, rep.records, rep.torn_bytes
    for w in rep.warnings:
        report.warnings.append(f"node {node.index} of --from: {w}")
    if rep.snapshot:
        snap_path = os.path.join(node.directory, files.snap_name(rep.snapshot))
        found = snapshot.read_info(snap_path).identity
        if found is not None:
            diff = identity.differences(found, expected)
            if diff and not adopted:
                raise _not_from(snap_path, found, diff)
    if old_ring.n > 1:
        count, first = identity.foreign_keys((k for k, _ in store.items()),
                                             old_ring.key_test(node.index))
        if count:
            raise identity.foreign_keys_error(
                node.directory, old_ring, node.index, count, first, subsystem="migrate",
                hint="pass the config it was written under as --from", ring_name="--from")
    if adopted:
        report.warnings.append(
            f"migrate: {node.directory} had adopted another ring's identity, but all its keys "
            f"lie in node {node.index}'s arc under --from; reading it as --from's node "
            f"{node.index}")
    owner = new_ring.owner
    sources = [Counter() for _ in stores]
    for k, v in store.items():
        j = owner(k)
        stores[j].apply(OP_CREATE, k, v)
        sources[j][node.index] += 1
    node.keys = len(store)
    for j, target in enumerate(report.new_nodes):
        got = sources[j][node.index]
        if got:
            target.sources[node.index] = got
            target.keys += got
            if j == node.index:
                target.kept += got


def _not_from(where: str, found: RingIdentity, diff) -> RingMismatchError:
    fields = "; ".join(f"{label} is {f} there but {e} in --from" for label, f, e in diff)
    return RingMismatchError(
        f"migrate: {where} was written by {found.describe()}, not by the --from ring: "
        f"{fields}; pass the config it was written under as --from", field=diff[0][0])


# -- putting the new tree in place ------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Atomically exchange two paths (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), a)


def _swap(staging: str, data_dir: str, kept_at: str) -> None:
    """data_dir <- staging; the old data_dir -> kept_at. All three are siblings."""
    parent = os.path.dirname(data_dir)
    if _exchange(staging, data_dir):
        # data_dir is the new ring from here on; the old one is under the staging name.
        files.fsync_dir(parent)
        os.rename(staging, kept_at)
    else:
        os.rename(data_dir, kept_at)
        os.rename(staging, data_dir)
    files.fsync_dir(parent)
