"""The ring identity of a node directory: which ring its data was written under.

A key's owner is a function of (ring.bits, ring.placement, number of nodes,
node index), so a directory's keys are only right for the ring that wrote
them. Each node directory holds ``IDENTITY``, written atomically (``.tmp``,
fsync, rename, fsync the directory) at the node's first start::

    {"format": 1, "bits": 16, "placement": "direct", "nodes": 4,
     "index": 2, "id": "32767", "fingerprint": "9c1f...", "created": "...",
     "adopted": false, "crc32": 123456789}

``fingerprint`` names the ring (bits, placement, nodes) and is the same on
every node of it; ``crc32`` is the CRC-32 of the canonical JSON of the other
fields. ``adopted`` is true when the file was written for a directory that an
older chordctl had filled without one (after every key was found in the
node's arc). Every snapshot header carries the same fields (snapshot.py).
``ring.routing`` is not part of it: it changes routes, never owners.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import zlib
from typing import Callable, Iterable

from chordctl.core.ring import Ring, node_id
from chordctl.core.storage import files
from chordctl.errors import RingMismatchError, StorageAccessError, StorageError

IDENTITY_NAME = "IDENTITY"
FORMAT = 1
PLACEMENT_CODES = {"direct": 1, "hash": 2}
MIGRATE_HINT = ("start it with the config it was written under, or move the data to "
                "this ring with every node stopped: `chordctl ring migrate --from OLD.yaml "
                "--to NEW.yaml`")
# `ring migrate` does not move replicated rings (each new node would need its
# groups' Raft history, not only their keys): the way is through a running
# ring, out with `kv scan` and in with `kv load`.
COPY_HINT = ("`ring migrate` does not move replicated rings (ring.replicas > 1); copy the "
             "keys instead: with the old ring up under its own config, `chordctl -c OLD.yaml "
             "kv export keys.jsonl`, then start the new ring on an empty storage.data_dir "
             "and `chordctl -c NEW.yaml kv load keys.jsonl`")
# What a replica whose files are damaged can do (ring.replicas > 1).
REJOIN = ("move the directory aside (keep it for the record) and start the node again on an "
          "empty one: it rejoins its groups as a new replica and catches up from the "
          "others -- while a majority of each of its groups is up and whole (`chordctl ring "
          "show`); or restore the node directory from a backup")
REPLICATED_HINT = "start it with the config it was written under; to change the ring, " + COPY_HINT


@dataclasses.dataclass(frozen=True)
class RingIdentity:
    bits: int
    placement: str
    nodes: int
    index: int
    replicas: int = 1      # ring.replicas: which arcs the directory holds

    @property
    def id(self) -> int:
        return node_id(self.bits, self.nodes, self.index)

    @property
    def fingerprint(self) -> str:
        """Names the ring, not the node: equal on every node of one ring."""
        text = f"chordctl-ring bits={self.bits} placement={self.placement} nodes={self.nodes}"
        if self.replicas > 1:   # (R = 1 keeps the fingerprint of before replication)
            text += f" replicas={self.replicas}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @classmethod
    def of(cls, ring: Ring, index: int, replicas: int = 1) -> "RingIdentity":
        return cls(ring.bits, ring.placement, ring.n, index, replicas)

    def describe(self) -> str:
        return (f"node {self.index} (id {self.id}) of a ring of {self.nodes} node(s), "
                f"ring.bits {self.bits}, ring.placement {self.placement}"
                + (f", ring.replicas {self.replicas}" if self.replicas > 1 else ""))


# (label in messages, attribute): what the user changes in the config.
FIELDS = (("ring.bits", "bits"), ("ring.placement", "placement"),
          ("number of nodes", "nodes"), ("node index", "index"), ("ring.replicas", "replicas"))


def differences(found: RingIdentity, expected: RingIdentity) -> list[tuple[str, object, object]]:
    """(field, found, expected) for every field that differs; the id last, if only it does."""
    out = [(label, getattr(found, attr), getattr(expected, attr))
           for label, attr in FIELDS if getattr(found, attr) != getattr(expected, attr)]
    if not out and found.id != expected.id:   # cannot happen today: id is derived
        out.append(("node id", found.id, expected.id))
    return out


def check(found: RingIdentity, expected: RingIdentity, where: str,
          adopted: bool = False, node_dir: Callable[[int], str] | None = None) -> None:
    """RingMismatchError (exit 2) naming every differing field, if any differs.

    Only the node index differing (same fingerprint: this very ring) means
    another node's directory sits in this node's place: the message says
    whose it is and to move it back, to ``node_dir(index)`` when given.
    *where* is the node directory or a file in it.
    """
    diff = differences(found, expected)
    if not diff:
        return
    directory = where if os.path.isdir(where) else os.path.dirname(where)
    extra = ""
    if adopted:
        extra = (f" (that identity was adopted from a directory an older chordctl wrote; if "
                 f"it was adopted under the wrong config, delete "
                 f"{os.path.join(directory, IDENTITY_NAME)} and start the node "
                 f"with the right one)")
    if [label for label, _, _ in diff] == ["node index"]:
        raise wrong_node_error(found, expected, where, directory, node_dir, extra)
    fields = "; ".join(f"{label} is {f} there but {e} in the config" for label, f, e in diff)
    raise RingMismatchError(
        f"storage: {where} was written by {found.describe()}, not by this ring: {fields}; "
        f"its keys would sit on nodes that no longer own them -- "
        f"{REPLICATED_HINT if max(found.replicas, expected.replicas) > 1 else MIGRATE_HINT}"
        f"{extra}",
        field=diff[0][0])


def wrong_node_error(found: RingIdentity, expected: RingIdentity, where: str, directory: str,
                     node_dir: Callable[[int], str] | None, extra: str = "") -> RingMismatchError:
    """Node *found*.index's directory in node *expected*.index's place (this
    ring's directories swapped, or one restored to the wrong path): no
    migration, each directory goes back to its own node."""
    j, i = found.index, expected.index
    home = f"node {j}'s path, {node_dir(j)}" if node_dir is not None else f"node {j}'s path"
    mine = node_dir(i) if node_dir is not None else directory
    return RingMismatchError(
        f"storage: {where} belongs to node {j} (id {found.id}) of this ring, not to node {i} "
        f"(id {expected.id}): its IDENTITY names node index {j}, and its keys are node {j}'s; "
        f"node directories were swapped or restored to the wrong place -- put each node's "
        f"own directory back: this one to {home}, and node {i}'s own directory (there, if "
        f"the two were swapped) to {mine}; then start the nodes again{extra}",
        field="node index")


# -- the IDENTITY file ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IdentityFile:
    identity: RingIdentity
    created: str
    adopted: bool
    path: str
    # The ring's node addresses (host:port, by index) as of the node's last
    # start; None in a file written before they were recorded.
    addresses: tuple[str, ...] | None = None
    # The membership epoch of those addresses, and the epoch each was set at
    # (membership.py); 1 and None in a file written before epochs.
    epoch: int = 1
    since: tuple[int, ...] | None = None


def check_addresses(recorded: IdentityFile, addresses: tuple[str, ...], where: str) -> None:
    """RingMismatchError (exit 2) when the ring of *recorded* had none of the
    node addresses of this one: a directory of another ring of the same
    shape (its keys all lie in the right arcs, so nothing else tells them
    apart; a replica of it would even win its groups' elections with its
    longer log and overwrite this ring's). A ring that moves some of its
    nodes keeps the others' addresses; one node alone is not checked."""
    if recorded.addresses is None or len(addresses) < 2:
        return
    if set(recorded.addresses) & set(addresses):
        return
    shown = ", ".join(recorded.addresses[:3]) + (", ..." if len(recorded.addresses) > 3 else "")
    raise RingMismatchError(
        f"storage: {where} was written by a ring whose nodes were at {shown}, and none of "
        f"this ring's nodes is at any of those addresses: it is another ring's directory "
        f"(of the same shape); start it with that ring's config. If this ring moved every "
        f"node to a new address, delete {recorded.path} on each node: the node then checks "
        f"that every key lies in its arc and records the new addresses",
        field="nodes")


def path_of(directory: str) -> str:
    return os.path.join(directory, IDENTITY_NAME)


def _canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def encode(identity: RingIdentity, adopted: bool = False, created: str | None = None,
           addresses: Iterable[str] | None = None, epoch: int = 1,
           since: Iterable[int] | None = None) -> bytes:
    doc = {"format": FORMAT, "bits": identity.bits, "placement": identity.placement,
           "nodes": identity.nodes, "index": identity.index, "id": str(identity.id),
           "fingerprint": identity.fingerprint, "adopted": adopted,
           "created": created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if identity.replicas > 1:
        doc["replicas"] = identity.replicas
    if addresses is not None:
        doc["addresses"] = list(addresses)
        doc["epoch"] = epoch
        if since is not None:
            doc["since"] = list(since)
    doc["crc32"] = zlib.crc32(_canonical(doc))
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def decode(data: bytes, path: str) -> IdentityFile:
    def bad(why: str) -> StorageError:
        return StorageError(
            f"storage: {path} is damaged ({why}); if this directory belongs to this ring, "
            f"delete the file and the node writes it again after checking that every key "
            f"lies in its arc")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or "crc32" not in doc:
        raise bad("no checksum")
    crc = doc.pop("crc32")
    if zlib.crc32(_canonical(doc)) != crc:
        raise bad("checksum mismatch")
    if doc.get("format") != FORMAT:
        raise StorageError(f"storage: {path} has identity format {doc.get('format')!r}, which "
                           f"this chordctl does not know; upgrade chordctl")
    try:
        ident = RingIdentity(int(doc["bits"]), str(doc["placement"]), int(doc["nodes"]),
                             int(doc["index"]), int(doc.get("replicas", 1)))
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"field {e} missing or wrong") from None
    if str(ident.id) != str(doc.get("id")) or ident.fingerprint != doc.get("fingerprint"):
        raise bad("id or fingerprint does not match the ring it names")
    addresses = doc.get("addresses")
    if addresses is not None and (not isinstance(addresses, list)
                                  or not all(isinstance(a, str) for a in addresses)):
        raise bad("field 'addresses' is not a list of addresses")
    epoch, since = doc.get("epoch", 1), doc.get("since")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise bad("field 'epoch' is not a positive integer")
    if since is not None and (
            addresses is None or not isinstance(since, list) or len(since) != len(addresses)
            or not all(isinstance(e, int) and not isinstance(e, bool) and 1 <= e <= epoch
                       for e in since)):
        raise bad("field 'since' is not one epoch per address")
    return IdentityFile(ident, str(doc.get("created", "")), bool(doc.get("adopted")), path,
                        tuple(addresses) if addresses is not None else None, epoch,
                        tuple(since) if since is not None else None)


def read(directory: str) -> IdentityFile | None:
    """The directory's identity, None when it has no IDENTITY file."""
    path = path_of(directory)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StorageAccessError.of(e, path, "read") from None
    return decode(data, path)


def write(directory: str, identity: RingIdentity, adopted: bool = False,
          addresses: Iterable[str] | None = None, created: str | None = None,
          epoch: int = 1, since: Iterable[int] | None = None) -> str:
    """Write IDENTITY atomically: .tmp, fsync, rename, fsync the directory."""
    final = path_of(directory)
    tmp = final + files.TMP_SUFFIX
    with open(tmp, "wb") as f:
        f.write(encode(identity, adopted, created, addresses, epoch, since))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    files.fsync_dir(directory)
    return final


def holds_data(directory: str) -> bool:
    """Whether a snapshot or a non-empty log is there (an idle start leaves neither)."""
    logs, snaps = files.list_counters(directory)
    return bool(snaps) or any(
        os.path.getsize(os.path.join(directory, files.log_name(c))) for c in logs)


# -- keys against the arc -----------------------------------------------------------


def foreign_keys(keys: Iterable[int], owns: Callable[[int], bool],
                 sample: int = 5) -> tuple[int, list[int]]:
    """(how many of *keys* *owns* rejects, the first few of them)."""
    count = 0
    first: list[int] = []
    for k in keys:
        if not owns(k):
            count += 1
            if len(first) < sample:
                first.append(k)
    return count, first


def foreign_keys_error(where: str, ring: Ring, index: int, count: int, first: list[int],
                       subsystem: str = "storage", hint: str = MIGRATE_HINT,
                       ring_name: str = "this ring") -> RingMismatchError:
    low, high = ring.arc(index)
    shown = ", ".join(str(k) if len(str(k)) <= 40 else str(k)[:37] + "..." for k in first)
    return RingMismatchError(
        f"{subsystem}: {where} holds {count} key(s) that node {index} does not own under "
        f"{ring_name} (its arc is ({low}, {high}] with ring.bits {ring.bits}, ring.placement "
        f"{ring.placement}, {ring.n} node(s)), e.g. {shown}; the directory was written under "
        f"another ring -- {hint}", field="keys")
