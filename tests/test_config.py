"""Tests for chordctl.config: example configs, every validation error, immutability, the CLI."""

from __future__ import annotations

import copy
import dataclasses
import glob
import os

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from chordctl import config as config_mod
from chordctl.config import Config, ConfigError, from_dict, load
from chordctl.errors import ExitStatus

from conftest import CLI, run_chordctl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "configs", "*.yaml")))


def valid() -> dict:
    return {
        "ring": {"bits": 8, "placement": "direct", "routing": "fingers"},
        "nodes": [{"host": "127.0.0.1", "port": 50051}, {"host": "127.0.0.1", "port": 50052}],
        "storage": {"data_dir": "./data", "snapshot_interval": 30, "fsync": "batch"},
        "limits": {"max_value_bytes": 1024},
        "client": {"timeout": 5, "grace": 5},
    }


def with_change(path: tuple, value, *, delete: bool = False) -> dict:
    doc = copy.deepcopy(valid())
    target = doc
    for part in path[:-1]:
        target = target[part]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


def config_error(doc) -> str:
    with pytest.raises(ConfigError) as err:
        from_dict(doc)
    msg = str(err.value)
    assert msg.startswith("config: ")
    assert err.value.exit_status == ExitStatus.USAGE
    return msg


def write(tmp_path, text: str, name: str = "chordctl.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- the examples ------------------------------------------------------------------


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=os.path.basename)
def test_example_config_loads(path: str) -> None:
    cfg = load(path)
    assert isinstance(cfg, Config)
    assert cfg.path == path
    assert len(cfg.nodes) >= 1
    assert len(cfg.nodes) <= 2 ** cfg.ring.bits
    assert cfg.ring.placement in config_mod.PLACEMENTS
    assert cfg.ring.routing in config_mod.ROUTINGS
    assert cfg.storage.fsync in config_mod.FSYNC_POLICIES
    assert len({n.address for n in cfg.nodes}) == len(cfg.nodes)
    for i in range(len(cfg.nodes)):
        assert cfg.node_dir(i).endswith(f"node-{i}")


def test_ring4_example_matches_spec_shape() -> None:
    cfg = load(os.path.join(ROOT, "examples", "configs", "ring4.yaml"))
    assert cfg.ring.bits == 16 and len(cfg.nodes) == 4
    assert cfg.limits.max_value_bytes == 1048576
    assert cfg.client.timeout == 5.0 and cfg.client.grace == 5.0


def test_valid_document_loads_with_defaults() -> None:
    cfg = from_dict({"ring": {"bits": 4}, "nodes": [{"host": "localhost", "port": 1}]})
    assert cfg.ring == config_mod.RingConfig(bits=4, placement="direct", routing="fingers")
    assert cfg.storage.fsync == "batch"
    assert cfg.limits.max_value_bytes == 1024 * 1024
    assert cfg.nodes[0].address == "localhost:1"


def test_ipv6_host_address_is_bracketed() -> None:
    cfg = from_dict({"ring": {"bits": 4}, "nodes": [{"host": "::1", "port": 7000}]})
    assert cfg.nodes[0].address == "[::1]:7000"


def test_env_var_names_config_file(tmp_path, monkeypatch) -> None:
    path = write(tmp_path, yaml.safe_dump(valid()), "from-env.yaml")
    monkeypatch.setenv(config_mod.ENV_CONFIG, path)
    assert load(None).path == path


# -- validation errors name the field --------------------------------------------


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ((("ring",), None, True), ["ring"]),
        ((("ring", "bits"), None, True), ["ring.bits"]),
        ((("ring", "bits"), 0, False), ["ring.bits", "0"]),
        ((("ring", "bits"), -3, False), ["ring.bits"]),
        ((("ring", "bits"), "abc", False), ["ring.bits", "abc"]),
        ((("ring", "bits"), 8.0, False), ["ring.bits"]),
        ((("ring", "bits"), True, False), ["ring.bits"]),
        ((("ring", "bits"), 5000, False), ["ring.bits"]),
        ((("ring",), 5, False), ["ring"]),
        ((("ring",), [8], False), ["ring"]),
        ((("ring", "placement"), "random", False), ["ring.placement", "direct", "hash"]),
        ((("ring", "routing"), "teleport", False), ["ring.routing", "fingers", "neighbors"]),
        ((("ring", "routing"), 3, False), ["ring.routing"]),
        ((("storage", "fsync"), "sometimes", False), ["storage.fsync", "always", "everysec"]),
        ((("storage", "fsync"), True, False), ["storage.fsync"]),
        ((("storage", "snapshot_interval"), -1, False), ["storage.snapshot_interval"]),
        ((("storage", "snapshot_interval"), "30s", False), ["storage.snapshot_interval"]),
        ((("storage", "snapshot_interval"), float("nan"), False), ["storage.snapshot_interval"]),
        ((("storage", "snapshot_interval"), float("inf"), False), ["storage.snapshot_interval"]),
        ((("storage", "data_dir"), "", False), ["storage.data_dir"]),
        ((("storage", "data_dir"), 7, False), ["storage.data_dir"]),
        ((("storage",), "fast", False), ["storage"]),
        ((("client", "timeout"), 0, False), ["client.timeout"]),
        ((("client", "timeout"), -2.5, False), ["client.timeout"]),
        ((("client", "timeout"), float("nan"), False), ["client.timeout"]),
        ((("client", "timeout"), float("inf"), False), ["client.timeout"]),
        ((("client", "timeout"), 10**400, False), ["client.timeout"]),
        ((("client", "timeout"), False, False), ["client.timeout"]),
        ((("client", "grace"), -1, False), ["client.grace"]),
        ((("client", "route"), "random", False), ["client.route"]),
        ((("limits", "max_value_bytes"), 0, False), ["limits.max_value_bytes"]),
        ((("limits", "max_value_bytes"), "1MiB", False), ["limits.max_value_bytes"]),
        ((("limits", "max_hops"), 0, False), ["limits.max_hops"]),
        # Upper bounds: past them a timer thread dies (OverflowError), every
        # request fails (gRPC deadline), or one key costs seconds to parse.
        ((("storage", "snapshot_interval"), 1e10, False),
         ["storage.snapshot_interval", "<= 31536000"]),
        ((("client", "timeout"), 1e10, False), ["client.timeout", "<= 86400"]),
        ((("client", "timeout"), 86401, False), ["client.timeout", "<= 86400"]),
        ((("client", "grace"), 1e10, False), ["client.grace", "<= 86400"]),
        ((("limits", "max_key_digits"), 1_000_000, False), ["limits.max_key_digits", "100000"]),
        ((("limits", "max_key_digits"), 0, False), ["limits.max_key_digits"]),
        ((("limits", "max_hops"), 10**6, False), ["limits.max_hops", "65536"]),
        ((("limits", "max_in_flight"), 0, False), ["limits.max_in_flight"]),
        ((("limits", "max_in_flight"), 10**9, False), ["limits.max_in_flight", "10000000"]),
        ((("limits", "max_batch_ops"), 0, False), ["limits.max_batch_ops"]),
        ((("limits", "max_batch_ops"), 10**8, False), ["limits.max_batch_ops", "1000000"]),
        ((("limits", "max_value_bytes"), 2**40, False), ["limits.max_value_bytes"]),
        ((("admin",), "loopback", False), ["admin", "mapping"]),
        ((("admin",), {"allow": "everyone"}, False), ["admin.allow", "loopback", "tls-client"]),
        ((("admin",), {"alow": "any"}, False), ["admin.alow", "admin.allow"]),
        ((("nodes",), None, True), ["nodes"]),
        ((("nodes",), {"host": "127.0.0.1", "port": 1}, False), ["nodes", "list"]),
        ((("nodes",), "127.0.0.1:50051", False), ["nodes", "list"]),
        ((("nodes",), [], False), ["nodes"]),
        ((("nodes", 0), "127.0.0.1:50051", False), ["nodes[0]"]),
        ((("nodes", 1, "port"), True, False), ["nodes[1].port", "bool"]),
        ((("nodes", 1, "port"), 70000, False), ["nodes[1].port", "65535"]),
        ((("nodes", 1, "port"), 0, False), ["nodes[1].port"]),
        ((("nodes", 1, "port"), "50052", False), ["nodes[1].port"]),
        ((("nodes", 1, "port"), None, True), ["nodes[1].port", "missing"]),
        ((("nodes", 0, "host"), None, True), ["nodes[0].host", "missing"]),
        ((("nodes", 0, "host"), "  ", False), ["nodes[0].host"]),
        ((("nodes", 0, "host"), 127, False), ["nodes[0].host"]),
        ((("nodes", 1, "metrics_port"), -1, False), ["nodes[1].metrics_port"]),
        ((("nodes", 1, "cpus"), -1, False), ["nodes[1].cpus", "CPU list"]),
        ((("nodes", 1, "cpus"), "3-1", False), ["nodes[1].cpus", "backwards"]),
        ((("nodes", 0, "cpus"), "zero", False), ["nodes[0].cpus", "'zero'"]),
        ((("nodes", 0, "cpus"), [0, 1], False), ["nodes[0].cpus", "list"]),
        ((("nodes", 0, "cpus"), True, False), ["nodes[0].cpus", "bool"]),
    ],
    ids=lambda v: repr(v) if not isinstance(v, list) else "",
)
def test_config_error_names_field(change, fields: list[str]) -> None:
    path, value, delete = change
    msg = config_error(with_change(path, value, delete=delete))
    for field in fields:
        assert field in msg, (field, msg)


@pytest.mark.parametrize(("section", "field", "value"), [
    ("storage", "snapshot_interval", 31_536_000), ("storage", "snapshot_interval", 0),
    ("client", "timeout", 86400), ("client", "timeout", 0.01), ("client", "grace", 0),
    ("limits", "max_key_digits", 100_000), ("limits", "max_hops", 65_536),
    ("limits", "max_batch_ops", 1_000_000), ("limits", "max_in_flight", 10_000_000),
])
def test_numeric_fields_accept_their_whole_range(section, field, value) -> None:
    doc = with_change((section, field), value)
    assert getattr(getattr(from_dict(doc), section), field) == value


@pytest.mark.parametrize("allow", ["any", "loopback"])
def test_admin_allow(allow) -> None:
    assert from_dict(valid()).admin.allow == "any"     # the default: today's behaviour
    doc = valid()
    doc["admin"] = {"allow": allow}
    assert from_dict(doc).admin.allow == allow


@pytest.mark.parametrize(("value", "cpus"), [(None, None), (1, {1}), ("0", {0}),
                                             ("0-2,5", {0, 1, 2, 5})])
def test_node_cpus(value, cpus) -> None:
    doc = valid()
    if value is not None:
        doc["nodes"][1]["cpus"] = value
    got = from_dict(doc).nodes[1].cpus
    assert got == (frozenset(cpus) if cpus is not None else None)


def test_duplicate_port_names_both_nodes() -> None:
    doc = valid()
    doc["nodes"].append({"host": "127.0.0.1", "port": 50051})
    msg = config_error(doc)
    assert "nodes[2].port" in msg
    assert "nodes[0]" in msg
    assert "127.0.0.1:50051" in msg


def test_same_port_on_different_hosts_is_allowed() -> None:
    doc = valid()
    doc["nodes"][1] = {"host": "127.0.0.2", "port": 50051}
    assert len(from_dict(doc).nodes) == 2


def test_more_nodes_than_ring_ids_is_refused() -> None:
    doc = valid()
    doc["ring"]["bits"] = 2
    doc["nodes"] = [{"host": "127.0.0.1", "port": 50051 + i} for i in range(5)]
    msg = config_error(doc)
    assert "nodes" in msg and "ring.bits" in msg and "5" in msg
    doc["nodes"] = doc["nodes"][:4]           # exactly 2^bits is fine
    assert len(from_dict(doc).nodes) == 4


@pytest.mark.parametrize(
    ("path", "bad", "hint"),
    [
        ((), "node", "nodes"),
        ((), "rings", "ring"),
        (("ring",), "bitz", "ring.bits"),
        (("ring",), "placment", "ring.placement"),
        (("storage",), "snapshot_intervall", "storage.snapshot_interval"),
        (("storage",), "fsnyc", "storage.fsync"),
        (("client",), "timout", "client.timeout"),
        (("limits",), "max_value_byte", "limits.max_value_bytes"),
        (("nodes", 0), "prot", "nodes[0].port"),
    ],
)
def test_unknown_field_suggests_the_closest_name(path: tuple, bad: str, hint: str) -> None:
    doc = valid()
    target = doc
    for part in path:
        target = target[part]
    target[bad] = 1
    msg = config_error(doc)
    assert "unknown field" in msg
    assert f"did you mean {hint}?" in msg, msg
    assert bad in msg


def test_unknown_field_without_close_match_lists_known_fields() -> None:
    doc = valid()
    doc["zzzzzz"] = 1
    msg = config_error(doc)
    assert "zzzzzz" in msg and "did you mean" not in msg
    assert "ring" in msg and "nodes" in msg


def test_document_not_a_mapping_is_refused() -> None:
    for doc in ([1, 2], "ring", 42):
        assert "mapping" in config_error(doc)


def test_huge_integers_are_refused_without_crashing() -> None:
    # Python refuses str() of ints beyond 4300 digits; messages must not.
    huge = 10**5000
    for change in ((("ring", "bits"), huge), (("nodes", 0, "port"), huge),
                   (("client", "timeout"), huge), (("ring", "placement"), huge)):
        msg = config_error(with_change(*change))
        assert len(msg) < 500
    doc = valid()
    doc["ring"][huge] = 1
    assert "unknown field" in config_error(doc)


# -- files -----------------------------------------------------------------------


def load_error(path: str) -> str:
    with pytest.raises(ConfigError) as err:
        load(path)
    return str(err.value)


def test_yaml_syntax_error_gives_line_number(tmp_path) -> None:
    path = write(tmp_path, "ring:\n  bits: 8\nnodes:\n  - {host: 127.0.0.1, port: 1\n"
                           "storage:\n  fsync: batch\n")
    msg = load_error(path)
    assert path in msg
    assert "line " in msg
    line = int(msg.split("line ")[1].split(",")[0])
    assert 4 <= line <= 6


def test_yaml_tab_indentation_gives_line_number(tmp_path) -> None:
    path = write(tmp_path, "ring:\n  bits: 8\nnodes:\n\t- {host: h, port: 1}\n")
    msg = load_error(path)
    assert "line 4" in msg


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file_is_refused(tmp_path, text: str) -> None:
    msg = load_error(write(tmp_path, text))
    assert "empty" in msg


def test_missing_file_is_refused_with_hint(tmp_path) -> None:
    path = str(tmp_path / "nope.yaml")
    msg = load_error(path)
    assert path in msg and "not found" in msg
    assert "--config" in msg


def test_directory_as_config_is_refused(tmp_path) -> None:
    msg = load_error(str(tmp_path))
    assert str(tmp_path) in msg


def test_file_error_names_file_and_field(tmp_path) -> None:
    doc = valid()
    doc["ring"]["bits"] = 0
    path = write(tmp_path, yaml.safe_dump(doc))
    msg = load_error(path)
    assert path in msg and "ring.bits" in msg


@pytest.mark.parametrize("text", [
    "ring: {bits: " + "9" * 5000 + "}\nnodes: [{host: h, port: 1}]\n",   # int() digit limit
    "ring: {bits: 8}\nnodes: [{host: h, port: 1}]\nstorage: {data_dir: 2020-13-01}\n",
    "ring: {bits: !!float abc}\nnodes: [{host: h, port: 1}]\n",
    "ring: {bits: 8}\nnodes: [{host: h, port: 1}]\n{[1]: 2}: 3\n",
    "ring: !!python/object:os.system {}\n",
    "ring: {bits: 8}\nnodes: [{host: h, port: 1}]\n" + "\x00",
    "\xff\xfe garbage",
])
def test_unreadable_yaml_values_are_config_errors(tmp_path, text: str) -> None:
    load_error(write(tmp_path, text))


def test_non_utf8_file_is_config_error(tmp_path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"ring: {bits: 8}\nnodes: [{host: \xe9t\xe9, port: 1}]\n")
    load_error(str(path))


# -- immutability ------------------------------------------------------------------


def test_config_objects_are_immutable() -> None:
    cfg = from_dict(valid())
    for obj, field, value in ((cfg, "nodes", ()), (cfg.ring, "bits", 3),
                              (cfg.nodes[0], "port", 1), (cfg.storage, "fsync", "never"),
                              (cfg.limits, "max_value_bytes", 1), (cfg.client, "timeout", 1.0)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, value)
    assert isinstance(cfg.nodes, tuple)
    assert hash(cfg.ring) == hash(from_dict(valid()).ring)


def test_config_does_not_alias_input_document() -> None:
    doc = valid()
    cfg = from_dict(doc)
    doc["nodes"].append({"host": "x", "port": 9})
    doc["ring"]["bits"] = 1
    assert len(cfg.nodes) == 2 and cfg.ring.bits == 8


def test_unknown_node_index_is_config_error() -> None:
    cfg = from_dict(valid())
    with pytest.raises(ConfigError, match="0..1"):
        cfg.node(2)
    with pytest.raises(ConfigError):
        cfg.node(-1)


# -- the CLI ----------------------------------------------------------------------


BAD_DOC = "ring:\n  bits: 0\nnodes:\n  - {host: 127.0.0.1, port: 50051}\n"


def test_cli_bad_config_exits_2_with_message(tmp_path) -> None:
    path = write(tmp_path, BAD_DOC, "bad.yaml")
    r = CLI(path)("ring", "show")
    assert r.exit_code == ExitStatus.USAGE, r.output
    assert "ring.bits" in r.output
    assert "Traceback" not in r.output


def test_chordctl_bad_config_exits_2_without_traceback(tmp_path) -> None:
    path = write(tmp_path, BAD_DOC, "bad.yaml")
    p = run_chordctl("-c", path, "ring", "show", timeout=60)
    out = p.stdout.decode() + p.stderr.decode()
    assert p.returncode == 2, out
    assert "ring.bits" in out and "bad.yaml" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("text", ["ring: [\n", "ring: {bits: " + "9" * 5000 + "}\n", ""])
def test_chordctl_unreadable_config_exits_2_without_traceback(tmp_path, text: str) -> None:
    path = write(tmp_path, text, "bad.yaml")
    p = run_chordctl("-c", path, "ring", "show", timeout=60)
    out = p.stdout.decode() + p.stderr.decode()
    assert p.returncode == 2, out
    assert "config:" in out
    assert "Traceback" not in out


def test_chordctl_missing_config_exits_2(tmp_path) -> None:
    p = run_chordctl("-c", str(tmp_path / "absent.yaml"), "ring", "show", timeout=60)
    out = p.stdout.decode() + p.stderr.decode()
    assert p.returncode == 2, out
    assert "not found" in out and "Traceback" not in out


# -- fuzz ------------------------------------------------------------------------

FIELD_NAMES = ["ring", "nodes", "storage", "limits", "client", "bits", "placement", "routing",
               "host", "port", "metrics_port", "data_dir", "snapshot_interval", "fsync",
               "max_value_bytes", "max_key_digits", "max_hops", "max_in_flight",
               "max_batch_ops", "timeout", "grace", "route", "admin", "allow"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
    st.sampled_from([4400, 5000]).map(lambda d: 10**d), st.floats(), st.text(max_size=12),
    st.sampled_from(["direct", "hash", "fingers", "neighbors", "batch", "always", "127.0.0.1",
                     "", "./data"]),
    st.binary(max_size=4),
)
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8), st.integers(),
                 st.none(), st.booleans(), st.floats(allow_nan=False))
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(keys, children, max_size=6)),
    max_leaves=30,
)


def check_from_dict(doc) -> None:
    try:
        cfg = from_dict(doc)
    except ConfigError as e:
        assert str(e).startswith("config: ")
        assert len(str(e)) < 2000
        return
    assert isinstance(cfg, Config)
    assert 1 <= len(cfg.nodes) <= 2 ** cfg.ring.bits


@settings(max_examples=500, deadline=None)
@given(documents)
def test_from_dict_of_random_document_is_config_or_config_error(doc) -> None:
    check_from_dict(doc)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.lists(st.sampled_from(FIELD_NAMES + [0, 1, 2]), min_size=1,
                                   max_size=3), documents), min_size=1, max_size=4))
def test_from_dict_of_damaged_valid_document_is_config_or_config_error(changes) -> None:
    doc = valid()
    for path, value in changes:
        target = doc
        for part in path[:-1]:
            try:
                target = target[part]
            except (KeyError, IndexError, TypeError):
                break
        else:
            if isinstance(target, dict):
                target[path[-1]] = value
            elif isinstance(target, list) and isinstance(path[-1], int) \
                    and path[-1] < len(target):
                target[path[-1]] = value
    check_from_dict(doc)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_load_of_random_text_is_config_or_config_error(tmp_path_factory, text: str) -> None:
    path = tmp_path_factory.getbasetemp() / f"fuzz-{os.getpid()}.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load(str(path))
    except ConfigError:
        pass



# -- relative paths are relative to the config file -------------------------------


def _tls_doc(cert: str, key: str, ca: str) -> dict:
    doc = valid()
    doc["tls"] = {"cert": cert, "key": key, "ca": ca}
    return doc


def test_relative_data_dir_is_relative_to_the_config_directory(tmp_path, monkeypatch) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    path = write(conf_dir, yaml.safe_dump(valid()))   # data_dir: ./data
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load(path)
    assert cfg.storage.data_dir == str(conf_dir / "data")
    assert cfg.node_dir(1) == str(conf_dir / "data" / "node-1")
    # The same file named by a relative path from another directory: same dirs.
    monkeypatch.chdir(tmp_path)
    assert load(os.path.join("conf", "chordctl.yaml")).storage.data_dir == str(conf_dir / "data")


def test_absolute_data_dir_is_kept(tmp_path) -> None:
    doc = valid()
    doc["storage"]["data_dir"] = str(tmp_path / "abs" / "data")
    assert load(write(tmp_path, yaml.safe_dump(doc))).storage.data_dir == \
        str(tmp_path / "abs" / "data")


def test_data_dir_of_a_document_without_file_is_relative_to_the_cwd(tmp_path,
                                                                     monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert from_dict(valid()).storage.data_dir == str(tmp_path / "data")


def test_relative_tls_files_are_relative_to_the_config_directory(tmp_path, monkeypatch) -> None:
    conf_dir = tmp_path / "conf"
    (conf_dir / "certs").mkdir(parents=True)
    for name in ("node.pem", "node.key", "ca.pem"):
        (conf_dir / "certs" / name).write_text("x")
    path = write(conf_dir, yaml.safe_dump(_tls_doc("certs/node.pem", "certs/node.key",
                                                   "certs/ca.pem")))
    monkeypatch.chdir(tmp_path)
    cfg = load(path)
    assert cfg.tls.cert == str(conf_dir / "certs" / "node.pem")
    assert cfg.tls.key == str(conf_dir / "certs" / "node.key")
    assert cfg.tls.ca == str(conf_dir / "certs" / "ca.pem")


def test_missing_relative_tls_file_says_where_it_was_looked_for(tmp_path) -> None:
    path = write(tmp_path, yaml.safe_dump(_tls_doc("certs/node.pem", "certs/node.key",
                                                   "certs/ca.pem")))
    msg = load_error(path)
    assert "tls.cert" in msg and "no such file" in msg
    assert str(tmp_path / "certs" / "node.pem") in msg and "config's directory" in msg


def test_ring4_example_keeps_its_data_beside_it_and_git_ignores_it() -> None:
    import subprocess
    configs = os.path.join(ROOT, "examples", "configs")
    cfg = load(os.path.join(configs, "ring4.yaml"))
    assert cfg.storage.data_dir == os.path.join(configs, "data", "ring4")
    r = subprocess.run(["git", "-C", ROOT, "check-ignore", "-q",
                        os.path.join(cfg.node_dir(0), "log.1")])
    if r.returncode == 128:
        pytest.skip("not a git checkout")
    assert r.returncode == 0, "examples/configs/data/ is not in .gitignore"
