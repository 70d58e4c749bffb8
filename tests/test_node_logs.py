"""`node serve --log-format json|text --log-level`: every line names the node's index and id."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import grpc

from chordctl import grpcenv
from chordctl.client import Client
from chordctl.localcluster import wait_serving
from conftest import write_config


def _serve(path: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "chordctl", "-c", path, "node", "serve",
                             "--node", "1", *extra],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _run_once(tmp_path, *extra: str) -> list[str]:
    run = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    run.mkdir()
    path = write_config(run, 2)
    from chordctl import config
    cfg = config.load(path)
    proc = _serve(path, *extra)
    try:
        wait_serving(cfg.nodes[1].address, proc, 30)
        with Client(cfg, target=cfg.nodes[1].address) as c:
            c.create("10", b"x")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return [line for line in err.splitlines() if line.strip()]


def test_json_logs_carry_node_index_and_id(tmp_path):
    lines = _run_once(tmp_path, "--log-format", "json", "--log-level", "debug")
    assert len(lines) >= 3
    docs = [json.loads(line) for line in lines]     # every line is one JSON object
    for d in docs:
        assert d["node"] == 1 and d["id"] == str(2 ** 16 - 1 - 2 ** 15)
        assert {"time", "level", "logger", "thread", "msg"} <= set(d)
    serving = [d["msg"] for d in docs if "serving on" in d["msg"]]
    assert len(serving) == 1
    # Which grpc, and the environment chordctl gave it (grpcenv.py).
    assert f"grpc {grpc.__version__}" in serving[0]
    release = grpcenv.grpcio_release()
    if grpcenv.LISTENER_RELEASES[0] <= release < grpcenv.LISTENER_RELEASES[1]:
        assert f"GRPC_EXPERIMENTS={grpcenv.LISTENER}" in serving[0]
    assert any("stopped" in d["msg"] for d in docs)


def test_text_logs_carry_node_index_and_id_and_respect_the_level(tmp_path):
    lines = _run_once(tmp_path, "--log-level", "warning")
    assert not any(" INFO " in line for line in lines), lines
    lines = _run_once(tmp_path)
    assert lines and all("node-1 id=32767" in line for line in lines), lines
