"""Bad input: arbitrary request bodies on the wire, arbitrary command lines.

The node must answer every request body with a reply or a clear error code,
never crash or wedge; the CLI must end every argv with exit 0-3, never a
traceback. (The log and snapshot readers are fuzzed in test_records.py and
test_snapshot_file.py.)
"""

from __future__ import annotations

import os
import socket

import grpc
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chordctl.cli.main import cli
from chordctl.pb import chord_pb2 as pb
from chordctl.protocol import OP_CREATE, OP_UPDATE
from conftest import Cluster, write_config

METHODS = ("Create", "Read", "Update", "Delete", "Batch")
CALL_TIMEOUT = 20.0
# Codes a node may answer a request with: its own verdicts, gRPC's size limit,
# and a deadline on a busy machine. UNKNOWN (an exception escaped a handler),
# INTERNAL and UNAVAILABLE (a node gone) are failures.
CALL_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED,
              grpc.StatusCode.DEADLINE_EXCEEDED}
# Per-operation codes inside a BatchReply: OK, invalid, deadline, not found,
# already exists, aborted (hop limit).
RESULT_CODES = {0, 3, 4, 5, 6, 10}
PROBE_KEY = "123456789012345678901234567890"

fuzz_settings = settings(max_examples=250, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def ring2(tmp_path_factory):
    """Two nodes, so fuzzed operations are also forwarded (node 0 is the entry)."""
    path = write_config(tmp_path_factory.mktemp("fuzz"), 2, timeout=5)
    cluster = Cluster(path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def raw(ring2):
    """method -> a callable that sends bytes as the request body, and returns bytes."""
    channel = grpc.insecure_channel(ring2.address(0))
    calls = {m: channel.unary_unary(f"/chord.v1.KeyValue/{m}", request_serializer=None,
                                    response_deserializer=None) for m in METHODS}
    yield calls
    channel.close()


keys = st.one_of(
    st.integers(0, 2**80).map(str),
    st.integers(0, 70000).map(str),
    st.text(max_size=24),
    st.sampled_from(["", "-1", "007", " 1", "1 ", "٣", "1e3", "0x10", "9" * 5000, "+5"]),
)
values = st.binary(max_size=64)


@st.composite
def operations(draw):
    return pb.Operation(
        op=draw(st.integers(-(2**31), 2**31 - 1) | st.integers(0, 4)),
        key=draw(keys), value=draw(values), trace=draw(st.booleans()),
        hops=draw(st.integers(0, 2**32 - 1) | st.integers(0, 3)),
        route=draw(st.lists(st.text(max_size=8), max_size=3)))


def message_for(method: str, draw) -> bytes:
    if method in ("Create", "Update"):
        msg = pb.WriteRequest(key=draw(keys), value=draw(values), trace=draw(st.booleans()))
    elif method in ("Read", "Delete"):
        msg = pb.KeyRequest(key=draw(keys), trace=draw(st.booleans()))
    else:
        msg = pb.BatchRequest(ops=draw(st.lists(operations(), max_size=8)))
    return msg.SerializeToString()


@st.composite
def mutated(draw, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif action == "cut" and data:
            del data[draw(st.integers(0, len(data) - 1)):]
        else:
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=6))
    return bytes(data)


@st.composite
def requests(draw):
    method = draw(st.sampled_from(METHODS))
    kind = draw(st.sampled_from(["random", "valid", "mutated"]))
    if kind == "random":
        body = draw(st.binary(max_size=300))
    else:
        body = message_for(method, draw)
        if kind == "mutated":
            body = draw(mutated(body))
    return method, body


def assert_still_serving(cluster: Cluster, raw) -> None:
    for node in cluster.nodes:
        assert node.alive, f"node {node.index} died\n{node.log()}"
    try:
        raw["Read"](pb.KeyRequest(key=PROBE_KEY).SerializeToString(), timeout=CALL_TIMEOUT)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, f"a normal Read got {e.code()}: " \
                                                      f"{e.details()}"


@fuzz_settings
@given(request=requests())
def test_any_request_body_gets_a_reply_or_an_error_code(ring2, raw, request):
    method, body = request
    try:
        reply = raw[method](body, timeout=CALL_TIMEOUT)
    except grpc.RpcError as e:
        assert e.code() in CALL_CODES, \
            f"{method} {body!r}: {e.code()}: {e.details()}"
    else:
        if method == "Batch":
            for res in pb.BatchReply.FromString(reply).results:
                assert res.code in RESULT_CODES, f"{method} {body!r}: result {res}"
        else:
            pb.Reply.FromString(reply)
    assert_still_serving(ring2, raw)


def test_malformed_request_body_is_invalid_argument(ring2, raw):
    for method in METHODS:
        with pytest.raises(grpc.RpcError) as err:
            raw[method](b"\xff\xff\xff", timeout=CALL_TIMEOUT)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, \
            f"{method}: {err.value.code()}: {err.value.details()}"
    assert_still_serving(ring2, raw)


# -- the command line ---------------------------------------------------------

# Commands that would start processes or long runs (node serve, cluster up and
# down, bench) are left out: the point is the parser, not starting a cluster.
FORBIDDEN = {"node", "cluster", "bench"}
# command -> (positional slots, option groups); slots are filled by kind.
TEMPLATES = {
    ("kv", "create"): (["KEY", "VALUE"], [["--trace"], ["--file", "PATH"]]),
    ("kv", "update"): (["KEY", "VALUE"], [["--trace"], ["--file", "PATH"]]),
    ("kv", "read"): (["KEY"], [["--trace"]]),
    ("kv", "delete"): (["KEY"], [["--trace"]]),
    ("kv", "load"): (["PATH"], [["--format", "FMT"], ["--batch", "NUM"], ["--depth", "NUM"]]),
    ("ring", "show"): ([], [["--timeout", "NUM"]]),
    ("ring", "locate"): (["KEY"], [["--from", "NUM"]]),
    ("snapshot", "list"): ([], [["--data-dir", "PATH"]]),
    ("snapshot", "create"): ([], [["--node", "NUM"]]),
    ("log", "replay"): ([], [["--data-dir", "PATH"], ["--dump"], ["--verify"]]),
    ("shell",): ([], [["--grace", "NUM"]]),
    ("kv",): ([], []), ("ring",): ([], []), ("snapshot",): ([], []), ("log",): ([], []),
    (): ([], [["--help"], ["--version"]]),
}
OPTIONS = ["--trace", "--file", "--dump", "--verify", "--from", "--data-dir", "--format",
           "--batch", "--depth", "--timeout", "--grace", "--node", "--help", "-h",
           "--version", "--", "--bogus", "-x", "-o", "--output"]
KEYS = ["0", "1", "10", "65535", "65536", "-5", "007", "1e9", "abc", "", " 1",
        "999999999999999999999999", "9" * 5000]
NUMBERS = ["0", "1", "2", "10", "-1", "1e9", "99999999999999999999", "nan", "inf", "-inf",
           "0.01", "3.5", "", "abc"]
FORMATS = ["json", "table", "plain", "yaml", "csv", "jsonl", ""]


@pytest.fixture(scope="module")
def cli_world(tmp_path_factory):
    """A config whose only node is a port held bound but never listening (refused at
    once, and no other test's node can take it), plus files and a node directory."""
    import yaml

    from chordctl.core.storage import records
    from chordctl.core.storage.log import LogFile

    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    d = str(tmp_path_factory.mktemp("cli-fuzz"))
    path = write_config(d, 1, timeout=0.5, grace=0.5)
    with open(path) as f:
        doc = yaml.safe_load(f)
    doc["nodes"] = [{"host": "127.0.0.1", "port": port}]
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    files = {"bad.yaml": "ring: [unclosed\n", "data.csv": "key,value\n1,a\n-2,b\nx\n",
             "data.jsonl": '{"key": 3, "value": "c"}\nnot json\n', "empty": ""}
    for name, text in files.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    node_dir = os.path.join(d, "node-0")
    os.makedirs(node_dir)
    log = LogFile(node_dir, 0)
    log.append(records.encode_many([(1, OP_CREATE, b"10", b"v"),
                                    (2, OP_UPDATE, b"10", b"w")]), 2)
    log.close()
    with open(os.path.join(node_dir, "log.0"), "ab") as f:
        f.write(b"\x01\x02torn")
    yield {"config": path, "target": f"127.0.0.1:{port}", "dir": d, "node_dir": node_dir,
           "paths": [path, node_dir, d, "-", os.path.join(d, "none")]
           + [os.path.join(d, name) for name in files],
           "targets": [f"127.0.0.1:{port}", f"[::1]:{port}", "127.0.0.1:0", "127.0.0.1:99999",
                       "nohost", ":", "", "127.0.0.1"]}
    holder.close()


@st.composite
def argvs(draw, world):
    """Mostly well-formed command lines with odd values, some plain noise."""
    fill = {"KEY": st.one_of(st.sampled_from(KEYS), st.integers(0, 2**70).map(str)),
            "VALUE": st.one_of(st.text(max_size=12), st.sampled_from(["-", "--trace", ""])),
            "PATH": st.sampled_from(world["paths"]),
            "NUM": st.one_of(st.sampled_from(NUMBERS), st.integers(-10, 10**6).map(str)),
            "FMT": st.sampled_from(FORMATS)}
    noise = st.one_of(st.sampled_from(OPTIONS), st.sampled_from(NUMBERS),
                      st.sampled_from(world["paths"]), st.text(max_size=12))
    argv: list[str] = []
    for _ in range(draw(st.integers(0, 2))):      # global options
        opt = draw(st.sampled_from(["-c", "--target", "-o"]))
        if opt == "-c":
            argv += [opt, draw(st.sampled_from([world["config"]] * 3 + world["paths"]))]
        elif opt == "--target":
            argv += [opt, draw(st.sampled_from(world["targets"]))]
        else:
            argv += [opt, draw(st.sampled_from(["json", "table", "plain"] * 3 + FORMATS))]
    command = draw(st.sampled_from(sorted(TEMPLATES)))
    argv += list(command)
    positional, groups = TEMPLATES[command]
    if draw(st.integers(0, 4)):                   # well-formed, 4 times in 5
        for slot in positional:
            if draw(st.integers(0, 9)):
                argv.append(draw(fill[slot]))
        for group in draw(st.permutations(groups)):
            if draw(st.booleans()):
                argv += [draw(fill[t]) if t in fill else t for t in group]
        if not draw(st.integers(0, 4)):
            argv.insert(draw(st.integers(0, len(argv))), draw(noise))
    else:
        argv += draw(st.lists(noise, max_size=6))
    return [t for t in argv if t not in FORBIDDEN]


@pytest.fixture(scope="module")
def cli_runner(cli_world):
    return CliRunner(env={"CHORDCTL_CONFIG": cli_world["config"],
                          "CHORDCTL_HISTORY": os.path.join(cli_world["dir"], "history")})


SHELL_INPUT = ["", "create 1 a\nread 1\n", "bogus\nsair\n", "update -1 x\ndelete abc\n",
               "\x00\xff\n"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_command_line_exits_0_to_3_without_a_traceback(cli_world, cli_runner, data):
    argv = data.draw(argvs(cli_world))
    stdin = data.draw(st.sampled_from(SHELL_INPUT))
    result = cli_runner.invoke(cli, argv, input=stdin, catch_exceptions=False)
    assert result.exit_code in (0, 1, 2, 3), \
        f"chordctl {argv!r} exited {result.exit_code}\n{result.output}"


@pytest.mark.parametrize("argv, code", [
    (["kv", "read", "10"], 3),                         # the node is down
    (["kv", "read", "-5"], 2),
    (["kv", "create"], 2),
    (["log", "replay", "--data-dir", "NODE_DIR"], 0),
    (["log", "replay", "--data-dir", "NODE_DIR", "--verify"], 1),   # the torn tail
    (["ring", "locate", "10"], 0),
    (["ring", "show"], 3),
])
def test_cli_fuzz_world_reaches_each_exit_code(cli_world, cli_runner, argv, code):
    # The fuzzer's world is not a wall of usage errors: each exit code is reachable.
    argv = [cli_world["node_dir"] if a == "NODE_DIR" else a for a in argv]
    result = cli_runner.invoke(cli, argv, input="", catch_exceptions=False)
    assert result.exit_code == code, result.output
