"""`chordctl kv` against one real `chordctl node serve` process.

Most cases run the CLI in-process (CliRunner); the ones about what a user
sees from a real process (exit codes, raw stdout bytes, stdin, no traceback)
run `python -m chordctl` as a subprocess.
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from conftest import NodeProc, free_ports, run_chordctl, write_config
from chordctl import config as config_mod
from chordctl.client import Client

MAX_VALUE = 256                 # limits.max_value_bytes of the node under test
CLIENT_TIMEOUT = 5
NODE_ID = str(2**16 - 1)        # a one-node ring of m=16: its node's id is 2^m - 1
BINARY = bytes(range(256))      # every byte value, exactly MAX_VALUE long


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_kv")
    path = write_config(d, 1, timeout=CLIENT_TIMEOUT, limits={"max_value_bytes": MAX_VALUE})
    n = NodeProc(path, 0).start()
    yield n
    assert n.stop() == 0, n.log()


@pytest.fixture
def cli(node, run_cli):
    return run_cli(node.config_path)


@pytest.fixture
def log_size(node):
    """Size of the node's log.0 now (0 before the first write)."""
    path = os.path.join(node.config.node_dir(0), "log.0")
    return lambda: os.path.getsize(path) if os.path.exists(path) else 0


def value_of(node: NodeProc, key: str) -> bytes | None:
    """The key's value as the node has it, or None; read through the library."""
    with Client(node.config) as c:
        results = c.batch([("read", key, None)])
    r = results[0]
    return None if isinstance(r, Exception) else r.value


def assert_clean_failure(r, code: int, *fragments: str) -> None:
    __tracebackhide__ = True
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    for f in fragments:
        assert f in r.stderr, (f, r.stderr)


# -- CRUD: the happy path -----------------------------------------------------------


def test_crud_roundtrip_prints_bare_values(cli):
    r = cli("kv", "create", "100", "hello world")
    assert r.exit_code == 0, r.stderr
    assert "created" in r.stdout and "100" in r.stdout

    r = cli("kv", "read", "100")
    assert r.exit_code == 0, r.stderr
    assert r.stdout_bytes == b"hello world"
    assert r.stderr == ""

    r = cli("kv", "update", "100", "olá ✓")
    assert r.exit_code == 0, r.stderr
    r = cli("kv", "read", "100")
    assert r.stdout_bytes == "olá ✓".encode()

    r = cli("kv", "delete", "100")
    assert r.exit_code == 0, r.stderr
    r = cli("kv", "read", "100")
    assert_clean_failure(r, 1, "key 100 ", "not found")
    assert r.stdout == ""


def test_key_with_leading_zeros_is_the_same_key(cli):
    assert cli("kv", "create", "0101", "z").exit_code == 0
    r = cli("kv", "read", "101")
    assert r.exit_code == 0, r.stderr
    assert r.stdout_bytes == b"z"


def test_real_process_read_prints_exact_value_bytes(node):
    cfg = node.config_path
    p = run_chordctl("-c", cfg, "kv", "create", "110", "plain text")
    assert p.returncode == 0, p.stderr
    p = run_chordctl("-c", cfg, "kv", "read", "110")
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"plain text"
    p = run_chordctl("-c", cfg, "kv", "delete", "110")
    assert p.returncode == 0, p.stderr
    p = run_chordctl("-c", cfg, "kv", "read", "110")
    assert p.returncode == 1
    assert b"110" in p.stderr and b"Traceback" not in p.stderr


# -- CRUD: failures name the key and change nothing --------------------------------


def test_create_existing_key_fails_and_keeps_old_value(cli, node):
    assert cli("kv", "create", "200", "original").exit_code == 0
    r = cli("kv", "create", "200", "intruder")
    assert_clean_failure(r, 1, "key 200 ", "already exists")
    assert r.stdout == ""
    assert value_of(node, "200") == b"original"


@pytest.mark.parametrize("args", [("read",), ("update", "new"), ("delete",)])
def test_missing_key_fails_and_is_not_created(cli, node, args):
    # (A refused mutation may still be logged -- the log writer runs beside the
    # applier and replay refuses it again -- so only the state is checked.)
    op, *rest = args
    r = cli("kv", op, "201", *rest)
    assert_clean_failure(r, 1, "key 201 ", "not found")
    assert r.stdout == ""
    assert value_of(node, "201") is None


# -- bad input: exit 2, a message, nothing changed ---------------------------------


BAD_INPUT = [
    # (argv after "kv", what stderr must say, keys that must stay absent)
    (("read", "-5"), "negative", ("5",)),
    (("create", "-5", "x"), "negative", ("5",)),
    (("update", "-5", "x"), "negative", ("5",)),
    (("delete", "-5"), "negative", ("5",)),
    (("read", "abc"), "not a non-negative decimal integer", ()),
    (("create", "abc", "x"), "not a non-negative decimal integer", ()),
    (("create", "1.5", "x"), "not a non-negative decimal integer", ("1", "15", "2")),
    (("read", "1.5"), "not a non-negative decimal integer", ()),
    (("create", "", "x"), "empty", ()),
    (("read", ""), "empty", ()),
    (("create", "300", "x" * (MAX_VALUE + 1)), "over the limit", ("300",)),
    (("frob", "1"), "frob", ("1",)),
    (("create", "301"), "missing VALUE", ("301",)),
    (("create", "302", "v", "--file", "/dev/null"), "not both", ("302",)),
    (("create", "303", "--file", "/nonexistent/value.bin"), "cannot read", ("303",)),
]


@pytest.mark.parametrize("argv,message,absent", BAD_INPUT,
                         ids=[" ".join(a)[:40] or "empty" for a, _, _ in BAD_INPUT])
def test_bad_input_exits_2_and_changes_nothing(cli, node, log_size, argv, message, absent):
    before = log_size()
    r = cli("kv", *argv)
    assert_clean_failure(r, 2, message)
    assert r.stdout == ""
    assert log_size() == before
    for key in absent:
        assert value_of(node, key) is None, key


@pytest.mark.parametrize("argv,message", [
    (("update", "310", "y" * (MAX_VALUE + 1)), "over the limit"),
    (("update", "310"), "missing VALUE"),
    (("update", "-310", "x"), "negative"),
])
def test_bad_update_leaves_existing_value(cli, node, log_size, argv, message):
    if value_of(node, "310") is None:
        assert cli("kv", "create", "310", "kept").exit_code == 0
    before = log_size()
    r = cli("kv", *argv)
    assert_clean_failure(r, 2, message)
    assert value_of(node, "310") == b"kept"
    assert log_size() == before


def test_value_that_begins_with_a_dash_goes_after_double_dash(cli, node):
    # Keys may be typed as "-5" (and refused); a value starting with "-" goes after --.
    r = cli("kv", "create", "315", "--", "-1x")
    assert r.exit_code == 0, r.stderr
    assert value_of(node, "315") == b"-1x"
    r = cli("kv", "update", "315", "--trace", "--", "--not-an-option")
    assert r.exit_code == 0, r.stderr
    assert value_of(node, "315") == b"--not-an-option"


@pytest.mark.parametrize("argv", [("update", "316", "--tarce"), ("create", "317", "--tarce"),
                                  ("create", "317", "-1x"), ("read", "316", "--tarce"),
                                  ("delete", "316", "--bogus"), ("create", "317", "v", "-z")])
def test_mistyped_option_is_a_usage_error_not_the_value(cli, node, log_size, argv):
    if value_of(node, "316") is None:
        assert cli("kv", "create", "316", "kept").exit_code == 0
    before = log_size()
    r = cli("kv", *argv)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert "no such option" in r.stderr.lower()
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert log_size() == before
    assert value_of(node, "316") == b"kept" and value_of(node, "317") is None
    if argv[0] in ("create", "update") and len(argv) == 3:
        assert f"{argv[1]} -- {argv[2]}" in r.stderr       # how to store it as a value


def test_help_says_values_that_begin_with_a_dash_go_after_double_dash(cli):
    for op in ("create", "update"):
        r = cli("kv", op, "--help")
        assert "goes after '--'" in r.stdout and " -- -" in r.stdout, r.stdout


def test_value_at_the_limit_is_accepted(cli, node):
    r = cli("kv", "create", "320", "v" * MAX_VALUE)
    assert r.exit_code == 0, r.stderr
    assert value_of(node, "320") == b"v" * MAX_VALUE


@pytest.mark.parametrize("argv,message", [
    (("kv", "read", "-5"), b"negative"),
    (("kv", "frob", "1"), b"frob"),
    (("kv", "create", "330", "x" * (MAX_VALUE + 1)), b"over the limit"),
])
def test_real_process_bad_input_has_no_traceback(node, argv, message):
    p = run_chordctl("-c", node.config_path, *argv)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert message in p.stderr
    assert b"Traceback" not in p.stderr and p.stdout == b""
    assert value_of(node, "330") is None


# -- output formats and tracing ------------------------------------------------------


def test_json_output_has_result_fields(cli):
    r = cli("kv", "create", "400", "json value", output="json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["op"] == "create" and doc["key"] == "400"
    assert doc["node_index"] == 0 and doc["node_id"] == NODE_ID

    r = cli("kv", "read", "400", output="json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"ok", "op", "key", "value", "node_index", "node_id"} <= doc.keys()
    assert (doc["ok"], doc["op"], doc["key"], doc["value"]) == (True, "read", "400", "json value")
    assert (doc["node_index"], doc["node_id"]) == (0, NODE_ID)

    for op, args in (("update", ("400", "v2")), ("delete", ("400",))):
        r = cli("kv", op, *args, output="json")
        assert r.exit_code == 0, r.stderr
        doc = json.loads(r.stdout)
        assert (doc["ok"], doc["op"], doc["key"], doc["node_index"], doc["node_id"]) == \
            (True, op, "400", 0, NODE_ID)


def test_trace_on_one_node_is_a_route_of_one_id(cli):
    assert cli("kv", "create", "410", "traced").exit_code == 0

    r = cli("kv", "read", "410", "--trace")
    assert r.exit_code == 0, r.stderr
    assert r.stdout_bytes == b"traced"          # the route goes to stderr
    assert f"route: {NODE_ID} (0 hops)" in r.stderr

    r = cli("kv", "read", "410", "--trace", output="json")
    assert json.loads(r.stdout)["route"] == [NODE_ID]

    r = cli("kv", "update", "410", "again", "--trace", output="json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["route"] == [NODE_ID]

    r = cli("kv", "read", "410", output="json")
    assert "route" not in json.loads(r.stdout)


# -- binary values -----------------------------------------------------------------


def read_json_bytes(cli, key: str) -> bytes:
    r = cli("kv", "read", key, output="json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["encoding"] == "base64"
    return base64.b64decode(doc["value"])


def test_file_path_binary_value_round_trips(cli, node, tmp_path):
    src = tmp_path / "value.bin"
    src.write_bytes(BINARY)
    r = cli("kv", "create", "500", "--file", str(src))
    assert r.exit_code == 0, r.stderr
    assert read_json_bytes(cli, "500") == BINARY
    assert cli("kv", "read", "500").stdout_bytes == BINARY

    src.write_bytes(BINARY[::-1])
    assert cli("kv", "update", "500", "--file", str(src)).exit_code == 0
    assert read_json_bytes(cli, "500") == BINARY[::-1]


def test_file_stdin_binary_value_round_trips(cli):
    data = b"\x00\xff\xfe\r\n\x80binary\x00"
    r = cli("kv", "create", "510", "--file", "-", input=data)
    assert r.exit_code == 0, r.stderr
    assert read_json_bytes(cli, "510") == data


def test_real_process_stdin_binary_round_trips(node):
    data = BINARY[128:] + BINARY[:128]
    p = run_chordctl("-c", node.config_path, "kv", "create", "520", "--file", "-", input=data)
    assert p.returncode == 0, p.stderr
    p = run_chordctl("-c", node.config_path, "kv", "read", "520")
    assert p.returncode == 0, p.stderr
    assert p.stdout == data


def test_real_process_random_binary_value_round_trips_byte_for_byte(node, tmp_path):
    # NUL bytes, a trailing newline: a file stored with --file reads back the same size.
    data = b"\x00" + os.urandom(MAX_VALUE - 2) + b"\n"
    src = tmp_path / "random.bin"
    src.write_bytes(data)
    cfg = node.config_path
    p = run_chordctl("-c", cfg, "kv", "create", "540", "--file", str(src))
    assert p.returncode == 0, p.stderr
    p = run_chordctl("-c", cfg, "kv", "read", "540")            # stdout is a pipe
    assert p.returncode == 0, p.stderr
    assert p.stdout == data and len(p.stdout) == len(data)
    out = tmp_path / "out.bin"
    p = run_chordctl("-c", cfg, "kv", "read", "540", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"" and out.read_bytes() == data
    p = run_chordctl("-c", cfg, "-o", "json", "kv", "read", "540", "--out", str(out))
    doc = json.loads(p.stdout)
    assert (doc["ok"], doc["out"], doc["bytes"]) == (True, str(out), len(data))
    assert "value" not in doc


def test_read_out_of_a_missing_key_writes_no_file(cli, tmp_path):
    out = tmp_path / "never.bin"
    r = cli("kv", "read", "541", "--out", str(out))
    assert_clean_failure(r, 1, "not found")
    assert not out.exists()


def test_read_out_to_an_unwritable_path_is_a_usage_error(cli, tmp_path):
    assert cli("kv", "create", "542", "x").exit_code == 0
    r = cli("kv", "read", "542", "--out", str(tmp_path / "no" / "such" / "dir"))
    assert_clean_failure(r, 2, "cannot write")


def test_read_on_a_terminal_ends_the_value_with_a_newline(node):
    import sys

    import pexpect
    assert run_chordctl("-c", node.config_path, "kv", "create", "543", "on a tty").returncode == 0
    child = pexpect.spawn(sys.executable, ["-m", "chordctl", "-c", node.config_path, "kv",
                                           "read", "543"], timeout=30)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert child.before == b"on a tty\r\n"        # the terminal's newline after the value


def test_file_over_the_limit_is_refused(cli, node, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(BINARY + b"!")
    r = cli("kv", "create", "530", "--file", str(src))
    assert_clean_failure(r, 2, "over the limit")
    assert value_of(node, "530") is None


# -- cluster unreachable -------------------------------------------------------------


def test_unreachable_target_exits_3(cli):
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    r = cli("kv", "read", "1", target=address)
    assert_clean_failure(r, 3, address)
    r = cli("kv", "create", "1", "x", target=address)
    assert_clean_failure(r, 3, address)


def test_real_process_unreachable_target_exits_3(node):
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    # subprocess.run raises TimeoutExpired if the CLI hangs well past its deadline.
    p = run_chordctl("-c", node.config_path, "--target", address, "kv", "read", "1",
                     timeout=CLIENT_TIMEOUT + 20)
    assert p.returncode == 3, (p.stdout, p.stderr)
    assert address.encode() in p.stderr and b"Traceback" not in p.stderr


def test_config_whose_node_is_down_exits_3(run_cli, tmp_path):
    path = write_config(tmp_path, 1, timeout=CLIENT_TIMEOUT)   # never started
    address = config_mod.load(path).nodes[0].address
    r = run_cli(path)("kv", "read", "1")
    assert_clean_failure(r, 3, address)


# -- -o json: one document on stdout, failures included ---------------------------------


JSON_FAILURES = [
    # (argv, exit code, what the error says)
    (("-o", "json", "kv", "read", "600"), 1, "not found"),
    (("kv", "read", "600", "-o", "json"), 1, "not found"),
    (("-o", "json", "kv", "create", "abc", "x"), 2, "not a non-negative decimal integer"),
    (("-o", "json", "kv", "update", "601", "--tarce"), 2, "No such option"),
    (("kv", "update", "601", "--tarce", "--output=json"), 2, "No such option"),
    (("-ojson", "kv", "frob"), 2, "No such command"),
    (("-o", "json", "--bogus", "kv", "read", "1"), 2, "No such option"),
]


@pytest.mark.parametrize("argv,code,message", JSON_FAILURES,
                         ids=[" ".join(a) for a, _, _ in JSON_FAILURES])
def test_json_failure_is_one_document_on_stdout(node, argv, code, message):
    p = run_chordctl("-c", node.config_path, *argv)
    assert p.returncode == code, (p.stdout, p.stderr)
    assert p.stdout.count(b"\n") == 1 and p.stdout.endswith(b"\n"), p.stdout   # one line
    doc = json.loads(p.stdout)
    assert doc == {"ok": False, "error": doc["error"], "exit": code}
    assert message in doc["error"]
    assert b"Traceback" not in p.stderr


def test_json_failure_of_an_unreachable_node_is_one_document(node):
    (port,) = free_ports(1)
    p = run_chordctl("-c", node.config_path, "-o", "json", "--target", f"127.0.0.1:{port}",
                     "kv", "read", "1")
    assert p.returncode == 3
    doc = json.loads(p.stdout)
    assert (doc["ok"], doc["exit"]) == (False, 3) and f"127.0.0.1:{port}" in doc["error"]


def test_json_success_is_one_line_on_a_pipe_and_indented_on_a_terminal(node):
    import sys

    import pexpect
    assert run_chordctl("-c", node.config_path, "kv", "create", "610", "j").returncode == 0
    p = run_chordctl("-c", node.config_path, "-o", "json", "kv", "read", "610")
    assert p.returncode == 0 and p.stdout.count(b"\n") == 1
    assert json.loads(p.stdout)["value"] == "j"
    child = pexpect.spawn(sys.executable, ["-m", "chordctl", "-c", node.config_path, "-o",
                                           "json", "kv", "read", "610"], timeout=30)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert child.before.count(b"\r\n") > 3                  # indented for a person
    assert json.loads(child.before.decode())["value"] == "j"


# -- the ring down: our words, the time really waited -----------------------------------


GRPC_INTERNALS = (b"failed to connect to all addresses", b"ipv4:", b"last error", b"UNKNOWN:")


def test_read_with_the_ring_down_fails_fast_in_our_words(tmp_path):
    import re
    import time
    path = write_config(tmp_path, 4, timeout=CLIENT_TIMEOUT)     # never started
    addresses = [n.address for n in config_mod.load(path).nodes]
    t0 = time.monotonic()
    p = run_chordctl("-c", path, "kv", "read", "1", timeout=30)
    elapsed = time.monotonic() - t0
    assert p.returncode == 3, p.stderr
    err = p.stderr.decode()
    assert all(a in err for a in addresses), err
    assert "connection refused" in err and "is the ring up?" in err, err
    assert "chordctl cluster up" in err, err
    assert not any(g.decode() in err for g in GRPC_INTERNALS), err
    said = float(re.search(r"in (\d+\.\d+)s", err).group(1))
    assert said <= elapsed and said < 2.0, (said, elapsed, err)   # no 4 x 1s wait


def test_unreachable_target_says_what_to_do_and_debug_shows_grpc(node):
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    p = run_chordctl("-c", node.config_path, "--target", address, "kv", "read", "1")
    assert p.returncode == 3
    assert f"cannot connect to {address} (connection refused".encode() in p.stderr, p.stderr
    assert b"is the ring up?" in p.stderr
    assert not any(g in p.stderr for g in GRPC_INTERNALS), p.stderr
    p = run_chordctl("-c", node.config_path, "--log-level", "debug", "--target", address,
                     "kv", "read", "1")
    assert p.returncode == 3
    assert b"failed to connect to all addresses" in p.stderr, p.stderr   # for the curious
    assert f"cannot connect to {address}".encode() in p.stderr


@pytest.fixture
def silent_node():
    """A gRPC server whose Read never answers in time: the client's deadline passes."""
    import threading
    from concurrent import futures

    import grpc

    from chordctl.pb import chord_pb2_grpc as pb_grpc
    release = threading.Event()

    class Silent(pb_grpc.KeyValueServicer):
        def Read(self, request, context):
            release.wait(30)
            context.abort(grpc.StatusCode.CANCELLED, "released")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_KeyValueServicer_to_server(Silent(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    release.set()
    server.stop(0)


def test_no_reply_says_the_time_it_waited(tmp_path, silent_node):
    import time
    path = write_config(tmp_path, 1, timeout=1.5)
    t0 = time.monotonic()
    p = run_chordctl("-c", path, "--target", silent_node, "kv", "read", "1", timeout=30)
    elapsed = time.monotonic() - t0
    assert p.returncode == 3, p.stderr
    assert f"no reply from {silent_node} within 1.5s (client.timeout)".encode() in p.stderr, \
        p.stderr
    assert 1.5 <= elapsed < 5, elapsed
    assert not any(g in p.stderr for g in GRPC_INTERNALS) and b"Deadline" not in p.stderr
