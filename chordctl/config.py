"""YAML configuration -> frozen, validated dataclasses. The only YAML importer.

Every problem is reported as a ConfigError naming the field
(``config: ring.bits: must be an integer >= 1 (got 0)``), never a traceback.
Relative paths (``storage.data_dir``, the TLS files) are taken relative to
the directory of the config file (the current directory for a document
without a file), once, here: a Config holds absolute paths, so every command
means the same files whatever directory it runs in.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from typing import Any

import yaml

from chordctl.cpulist import parse_cpulist
from chordctl.errors import ConfigError
from chordctl.protocol import MAX_BITS, MIN_BITS, PLACEMENTS, ROUTINGS
FSYNC_POLICIES = ("always", "batch", "everysec", "never")
CLIENT_ROUTES = ("entry", "direct")
READS = ("index", "log")           # replication.reads
DEFAULT_CONFIG = "chordctl.yaml"
# Upper bounds of the numeric fields: past them timers overflow (threading's
# TIMEOUT_MAX, gRPC deadlines) or one request costs seconds of CPU.
MAX_SNAPSHOT_INTERVAL = 365 * 86400
MAX_SECONDS = 86400
MAX_KEY_DIGITS = 100_000
ENV_CONFIG = "CHORDCTL_CONFIG"


@dataclasses.dataclass(frozen=True)
class RingConfig:
    bits: int = 16
    placement: str = "direct"
    routing: str = "fingers"
    replicas: int = 1      # R: each arc on its owner and the next R-1 nodes (Raft per arc)


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    host: str
    port: int
    metrics_port: int | None = None
    cert: str | None = None        # overrides tls.cert / tls.key for this node
    key: str | None = None
    cpus: frozenset[int] | None = None   # pin the node process to these CPUs

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class StorageConfig:
    data_dir: str = "./data"
    snapshot_interval: float = 30.0
    fsync: str = "batch"
    snapshot_on_shutdown: bool = True


@dataclasses.dataclass(frozen=True)
class ReplicationConfig:
    """Raft timers of every arc's group (ring.replicas > 1), in seconds.

    A follower that hears no leader for *election_timeout* (up to twice
    that, at random) starts an election; a leader sends *heartbeat*s.
    *reads*: ``index`` answers a read on the arc's leader once a majority
    confirmed it still leads (Raft's ReadIndex, no log entry); ``log`` puts
    every read through the arc's log as an entry. Both are linearizable."""

    election_timeout: float = 1.0
    heartbeat: float = 0.1
    reads: str = "index"


@dataclasses.dataclass(frozen=True)
class LimitsConfig:
    max_value_bytes: int = 1024 * 1024
    max_key_digits: int = 4096
    max_hops: int = 64
    max_in_flight: int = 100_000
    max_batch_ops: int = 10_000


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    timeout: float = 5.0
    grace: float = 5.0
    route: str = "entry"


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """Transport security; its presence turns TLS on (see chordctl.security).

    ``cert``/``key``: every node's server certificate (``nodes[i].cert/key``
    override it per node). ``ca``: the bundle that verifies peers (system roots
    when absent). ``require_client_cert``: mutual TLS, nodes refuse clients
    without a certificate signed by ``ca``. ``client_cert``/``client_key``:
    what clients, and nodes forwarding to each other, present.
    """

    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    require_client_cert: bool = False
    client_cert: str | None = None
    client_key: str | None = None


ADMIN_ALLOW = ("any", "loopback", "tls-client")


@dataclasses.dataclass(frozen=True)
class AdminConfig:
    """Who may call chord.v1.Admin (Status, TakeSnapshot, Files).

    ``any``: every client that reaches the node (KeyValue's rule).
    ``loopback``: clients on the node's own host only. ``tls-client``: clients
    presenting ``tls.client_cert`` itself (the operators' and the nodes'
    certificate), which needs mutual TLS (``tls.require_client_cert``).
    """

    allow: str = "any"


@dataclasses.dataclass(frozen=True)
class Config:
    ring: RingConfig
    nodes: tuple[NodeConfig, ...]
    storage: StorageConfig = StorageConfig()
    limits: LimitsConfig = LimitsConfig()
    client: ClientConfig = ClientConfig()
    path: str | None = None
    tls: TlsConfig | None = None   # None: plaintext gRPC
    admin: AdminConfig = AdminConfig()
    replication: ReplicationConfig = ReplicationConfig()

    def node_dir(self, index: int) -> str:
        """The node's own directory, ``<storage.data_dir>/node-<i>``."""
        return os.path.join(self.storage.data_dir, f"node-{index}")

    def node(self, index: int) -> NodeConfig:
        if not 0 <= index < len(self.nodes):
            raise ConfigError(
                f"config: no node {index}: the config lists {len(self.nodes)} "
                f"node(s), numbered 0..{len(self.nodes) - 1}"
            )
        return self.nodes[index]


def load(path: str | None = None) -> Config:
    """Load and validate the config at *path* (or $CHORDCTL_CONFIG, or ./chordctl.yaml)."""
    path = path or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(
            f"config: {path} not found; pass -c/--config PATH or set "
            f"${ENV_CONFIG} (examples are in examples/configs/)"
        ) from None
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config: {path}: not UTF-8 text (bad byte at offset {e.start}); "
                          f"save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise ConfigError(f"config: {path}: {problem}{where}") from None
    except ValueError as e:
        # PyYAML builds ints and dates with int()/date(), which raise this
        # (an integer of more than 4300 digits, a date like 2020-13-01).
        raise ConfigError(f"config: {path}: a value cannot be read ({e})") from None
    return from_dict(data, path=path)


def from_dict(data: Any, path: str | None = None) -> Config:
    """Validate a parsed YAML document into a Config."""
    prefix = f"config: {path}: " if path else "config: "
    try:
        return _build(data, path)
    except _FieldError as e:
        raise ConfigError(prefix + str(e)) from None


class _FieldError(Exception):
    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")


def _check_keys(section: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in section:
        if key not in allowed:
            text = key if isinstance(key, str) else _brief(key)
            hint = difflib.get_close_matches(text, allowed, n=1)
            extra = f" (did you mean {where + '.' if where else ''}{hint[0]}?)" if hint else ""
            name = f"{where}.{text}" if where else text
            raise _FieldError(name, f"unknown field{extra}; known: {', '.join(allowed)}")


def _section(data: dict, name: str) -> dict:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _FieldError(name, f"must be a mapping (got {_show(value)})")
    return value


def _show(value: Any) -> str:
    return f"{type(value).__name__} {_brief(value)}"


def _brief(value: Any) -> str:
    """repr() for a message: never raises, never floods the terminal."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's limit on digits for str()
        if isinstance(value, int):
            return f"an integer of {value.bit_length()} bits"
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 60 else text[:57] + "..."


def _int(section: dict, where: str, name: str, default: Any, low: int | None = None,
         high: int | None = None, required: bool = False) -> Any:
    field = f"{where}.{name}"
    if name not in section or section[name] is None:
        if required:
            raise _FieldError(field, "missing (required)")
        return default
    value = section[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(field, f"must be an integer (got {_show(value)})")
    if low is not None and value < low:
        raise _FieldError(field, f"must be an integer >= {low} (got {_brief(value)})")
    if high is not None and value > high:
        raise _FieldError(field, f"must be an integer <= {high} (got {_brief(value)})")
    return value


def _number(section: dict, where: str, name: str, default: float, low: float,
            strict: bool, high: float | None = None, unit: str = "seconds") -> float:
    field = f"{where}.{name}"
    if name not in section or section[name] is None:
        return default
    value = section[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _FieldError(field, f"must be a number of seconds (got {_show(value)})")
    try:
        finite = math.isfinite(value)
    except OverflowError:   # an int too large for a float
        finite = False
    if not finite:
        # nan passes every comparison below; inf overflows timers and deadlines.
        raise _FieldError(field, f"must be a finite number of seconds (got {_brief(value)})")
    if (value <= low) if strict else (value < low):
        op = ">" if strict else ">="
        raise _FieldError(field, f"must be {op} {low} (got {_brief(value)})")
    if high is not None and value > high:
        shown = int(high) if float(high).is_integer() else high
        raise _FieldError(field, f"must be <= {shown} {unit} (got {_brief(value)})")
    return float(value)


def _choice(section: dict, where: str, name: str, default: str, choices: tuple[str, ...]) -> str:
    field = f"{where}.{name}"
    value = section.get(name, default)
    if value is None:
        return default
    if value not in choices:
        raise _FieldError(field, f"must be one of {' | '.join(choices)} (got {_brief(value)})")
    return value


def _cpus(section: dict, where: str) -> frozenset[int] | None:
    value = section.get("cpus")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return frozenset({value})
    if not isinstance(value, str):
        raise _FieldError(f"{where}.cpus", f"must be a CPU list like 0, 0-3 or 0,2 "
                          f"(got {_show(value)})")
    try:
        return parse_cpulist(value)
    except ValueError as e:
        raise _FieldError(f"{where}.cpus", f"{e} (got {_brief(value)})") from None


def _base_dir(path: str | None) -> str:
    """The directory relative paths in the config at *path* are taken from."""
    return os.path.dirname(os.path.abspath(path)) if path else os.getcwd()


def _resolve(base: str, value: str) -> str:
    """*value* as an absolute path: ``~`` expanded, relative to *base*."""
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _build(data: Any, path: str | None) -> Config:
    base = _base_dir(path)
    if data is None:
        raise _FieldError("(document)", "the file is empty; it needs at least ring.bits and nodes")
    if not isinstance(data, dict):
        raise _FieldError("(document)", f"must be a mapping of sections (got {_show(data)})")
    _check_keys(data, ("ring", "nodes", "storage", "limits", "client", "tls", "admin",
                       "replication"), "")

    if "ring" not in data:
        raise _FieldError("ring", "missing (required): give at least ring.bits")
    ring_d = _section(data, "ring")
    _check_keys(ring_d, ("bits", "placement", "routing", "replicas"), "ring")
    ring = RingConfig(
        bits=_int(ring_d, "ring", "bits", None, low=MIN_BITS, high=MAX_BITS, required=True),
        placement=_choice(ring_d, "ring", "placement", RingConfig.placement, PLACEMENTS),
        routing=_choice(ring_d, "ring", "routing", RingConfig.routing, ROUTINGS),
        replicas=_int(ring_d, "ring", "replicas", RingConfig.replicas, low=1),
    )

    raw_nodes = data.get("nodes")
    if raw_nodes is None:
        raise _FieldError("nodes", "missing (required): list at least one {host, port}")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise _FieldError("nodes", f"must be a non-empty list of {{host, port}} (got {_show(raw_nodes)})")
    if len(raw_nodes) > 2 ** ring.bits:
        raise _FieldError("nodes", f"{len(raw_nodes)} nodes do not fit a ring of "
                          f"2^{ring.bits} = {2 ** ring.bits} ids; raise ring.bits")
    nodes = []
    seen: dict[tuple[str, int], int] = {}
    for i, raw in enumerate(raw_nodes):
        where = f"nodes[{i}]"
        if not isinstance(raw, dict):
            raise _FieldError(where, f"must be a mapping {{host, port}} (got {_show(raw)})")
        _check_keys(raw, ("host", "port", "metrics_port", "cert", "key", "cpus"), where)
        host = raw.get("host")
        if host is None:
            raise _FieldError(f"{where}.host", "missing (required)")
        if not isinstance(host, str) or not host.strip():
            raise _FieldError(f"{where}.host", f"must be a host name or address (got {_show(host)})")
        port = _int(raw, where, "port", None, low=1, high=65535, required=True)
        metrics_port = _int(raw, where, "metrics_port", None, low=1, high=65535)
        endpoint = (host, port)
        if endpoint in seen:
            raise _FieldError(f"{where}.port", f"duplicate address {host}:{port}, "
                              f"already used by nodes[{seen[endpoint]}]")
        seen[endpoint] = i
        cert, key = _file_pair(raw, where, "cert", "key", base)
        if cert and data.get("tls") is None:
            raise _FieldError(f"{where}.cert", "a node certificate needs a tls section "
                              "(at least tls.ca, to verify the nodes)")
        nodes.append(NodeConfig(host=host, port=port, metrics_port=metrics_port,
                                cert=cert, key=key, cpus=_cpus(raw, where)))

    st = _section(data, "storage")
    _check_keys(st, ("data_dir", "snapshot_interval", "fsync", "snapshot_on_shutdown"),
                "storage")
    on_shutdown = st.get("snapshot_on_shutdown", True)
    if not isinstance(on_shutdown, bool):
        raise _FieldError("storage.snapshot_on_shutdown",
                          f"must be true or false (got {_show(on_shutdown)})")
    data_dir = st.get("data_dir", StorageConfig.data_dir)
    if not isinstance(data_dir, str) or not data_dir:
        raise _FieldError("storage.data_dir", f"must be a directory path (got {_show(data_dir)})")
    storage = StorageConfig(
        data_dir=_resolve(base, data_dir),
        snapshot_interval=_number(st, "storage", "snapshot_interval",
                                  StorageConfig.snapshot_interval, 0.0, strict=False,
                                  high=MAX_SNAPSHOT_INTERVAL, unit="seconds (a year)"),
        fsync=_choice(st, "storage", "fsync", StorageConfig.fsync, FSYNC_POLICIES),
        snapshot_on_shutdown=on_shutdown,
    )

    lim = _section(data, "limits")
    _check_keys(lim, tuple(f.name for f in dataclasses.fields(LimitsConfig)), "limits")
    limits = LimitsConfig(
        max_value_bytes=_int(lim, "limits", "max_value_bytes", LimitsConfig.max_value_bytes,
                             low=1, high=64 * 1024 * 1024),
        # Parsing a decimal key costs time quadratic in its digits (100,000:
        # 50 ms; 1,000,000: 4 s), so a node caps what one request can cost.
        max_key_digits=_int(lim, "limits", "max_key_digits", LimitsConfig.max_key_digits,
                            low=1, high=MAX_KEY_DIGITS),
        max_hops=_int(lim, "limits", "max_hops", LimitsConfig.max_hops, low=1, high=65_536),
        max_in_flight=_int(lim, "limits", "max_in_flight", LimitsConfig.max_in_flight, low=1,
                           high=10_000_000),
        max_batch_ops=_int(lim, "limits", "max_batch_ops", LimitsConfig.max_batch_ops, low=1,
                           high=1_000_000),
    )

    cl = _section(data, "client")
    _check_keys(cl, ("timeout", "grace", "route"), "client")
    client = ClientConfig(
        timeout=_number(cl, "client", "timeout", ClientConfig.timeout, 0.0, strict=True,
                        high=MAX_SECONDS, unit="seconds (a day)"),
        grace=_number(cl, "client", "grace", ClientConfig.grace, 0.0, strict=False,
                      high=MAX_SECONDS, unit="seconds (a day)"),
        route=_choice(cl, "client", "route", ClientConfig.route, CLIENT_ROUTES),
    )
    if ring.replicas > len(nodes):
        raise _FieldError("ring.replicas", f"must be <= the number of nodes, {len(nodes)} "
                          f"(got {ring.replicas}): an arc cannot have more replicas than "
                          f"there are nodes")
    replication = _replication(data)
    tls = _tls(data, nodes, base)
    admin = _admin(data)
    return Config(ring=ring, nodes=tuple(nodes), storage=storage, limits=limits,
                  client=client, path=path, tls=tls, admin=admin, replication=replication)


def _replication(data: dict) -> ReplicationConfig:
    rep = _section(data, "replication")
    _check_keys(rep, ("election_timeout", "heartbeat", "reads"), "replication")
    reads = _choice(rep, "replication", "reads", ReplicationConfig.reads, READS)
    heartbeat = _number(rep, "replication", "heartbeat", ReplicationConfig.heartbeat, 0.0,
                        strict=True, high=60.0)
    election = _number(rep, "replication", "election_timeout",
                       ReplicationConfig.election_timeout, 0.0, strict=True, high=600.0)
    if election <= 3 * heartbeat:
        raise _FieldError("replication.election_timeout",
                          f"must be more than 3 x replication.heartbeat ({3 * heartbeat:g}) "
                          f"(got {election:g}): followers would elect between heartbeats")
    return ReplicationConfig(election_timeout=election, heartbeat=heartbeat, reads=reads)


def _admin(data: dict) -> AdminConfig:
    ad = _section(data, "admin")
    _check_keys(ad, ("allow",), "admin")
    # tls-client also needs mutual TLS on the nodes; a client's own config may
    # describe its TLS differently, so the node checks that when it starts
    # (security.admin_certificate).
    return AdminConfig(allow=_choice(ad, "admin", "allow", AdminConfig.allow, ADMIN_ALLOW))


def _file(section: dict, where: str, name: str, base: str) -> str | None:
    """An optional path to an existing file, made absolute (relative to *base*)."""
    field = f"{where}.{name}"
    value = section.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _FieldError(field, f"must be a file path (got {_show(value)})")
    resolved = _resolve(base, value)
    if not os.path.isfile(resolved):
        what = "is not a file" if os.path.exists(resolved) else "no such file"
        looked = "" if resolved == value else \
            f" (looked for {resolved}: relative paths are relative to the config's directory)"
        raise _FieldError(field, f"{_brief(value)}: {what}{looked}")
    return resolved


def _file_pair(section: dict, where: str, cert_name: str, key_name: str,
               base: str) -> tuple[str | None, str | None]:
    """A certificate and its key: both or neither."""
    cert = _file(section, where, cert_name, base)
    key = _file(section, where, key_name, base)
    if cert and not key:
        raise _FieldError(f"{where}.{key_name}", f"missing: {where}.{cert_name} needs its "
                          f"private key")
    if key and not cert:
        raise _FieldError(f"{where}.{cert_name}", f"missing: {where}.{key_name} needs its "
                          f"certificate")
    return cert, key


def _tls(data: dict, nodes: list[NodeConfig], base: str) -> TlsConfig | None:
    if data.get("tls") is None:
        return None
    t = _section(data, "tls")
    _check_keys(t, tuple(f.name for f in dataclasses.fields(TlsConfig)), "tls")
    cert, key = _file_pair(t, "tls", "cert", "key", base)
    client_cert, client_key = _file_pair(t, "tls", "client_cert", "client_key", base)
    ca = _file(t, "tls", "ca", base)
    require = t.get("require_client_cert", False)
    if require is None:
        require = False
    if not isinstance(require, bool):
        raise _FieldError("tls.require_client_cert",
                          f"must be true or false (got {_show(require)})")
    if not cert:
        # Either no node has a certificate (a client-only config) or each has its own.
        have = [i for i, n in enumerate(nodes) if n.cert]
        if have and len(have) < len(nodes):
            i = next(i for i, n in enumerate(nodes) if not n.cert)
            raise _FieldError(f"nodes[{i}].cert", f"missing: nodes[{have[0]}] has its own "
                              f"certificate, so every node needs one (or set tls.cert)")
    if require:
        if not ca:
            raise _FieldError("tls.ca", "missing: tls.require_client_cert needs the CA "
                              "that signed the client certificates")
        if not client_cert:
            raise _FieldError("tls.client_cert", "missing: with tls.require_client_cert the "
                              "nodes present it to each other; set tls.client_cert and "
                              "tls.client_key")
    return TlsConfig(cert=cert, key=key, ca=ca, require_client_cert=require,
                     client_cert=client_cert, client_key=client_key)


def replicas_warning(replicas: int) -> str | None:
    """What an even ring.replicas deserves (README, Replication), or None."""
    if replicas % 2:
        return None
    survives = (replicas - 1) // 2
    lost = "no replica" if not survives else f"{survives} replica(s)"
    return (f"ring.replicas {replicas} is even: an arc on {replicas} replicas survives the "
            f"loss of {lost}, no more than one on {replicas - 1} does, and each write "
            f"waits for {replicas // 2 + 1} of them; use an odd number ({replicas + 1} "
            f"survives the loss of {survives + 1})")

