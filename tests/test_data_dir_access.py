"""A data directory chordctl may not read or write: a clear error naming the
path, exit 2, never a PermissionError traceback (`node serve`, `snapshot list`).

Tests run as root here, where chmod does not deny anything, so the denial is
made in-process (os.listdir refusing the node directory, exactly where the
kernel refuses it for an unprivileged user); with a non-root uid a second
test checks the real thing in a real process.
"""

from __future__ import annotations

import logging
import os

import pytest

from chordctl import config as config_mod
from chordctl.errors import ExitStatus
from conftest import run_chordctl, write_config


@pytest.fixture
def deny(monkeypatch):
    """deny(path): os.listdir of *path* raises EACCES, as for a directory of mode 000."""
    real = os.listdir

    def install(path: str) -> None:
        def listdir(p="."):
            if os.path.abspath(os.fspath(p)) == os.path.abspath(path):
                raise PermissionError(13, "Permission denied", os.fspath(p))
            return real(p)
        monkeypatch.setattr(os, "listdir", listdir)
    return install


@pytest.fixture
def keep_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_node_serve_on_unreadable_data_dir_exits_2_naming_it(tmp_path, run_cli, deny,
                                                             keep_logging) -> None:
    path = write_config(tmp_path, 1)
    node_dir = config_mod.load(path).node_dir(0)
    os.makedirs(node_dir)
    deny(node_dir)
    r = run_cli(path)("node", "serve", "--node", "0")
    assert r.exit_code == ExitStatus.USAGE, r.output
    # Recovery (listing the directory) or the server's own check (using it)
    # may be the first to meet it; both name the directory and the cause.
    assert "storage: cannot " in r.output and node_dir in r.output, r.output
    assert "permission denied" in r.output.lower(), r.output
    assert "Traceback" not in r.output


def test_snapshot_list_of_unreadable_dir_exits_2_naming_it(tmp_path, run_cli, deny) -> None:
    d = tmp_path / "node-0"
    d.mkdir()
    deny(str(d))
    r = run_cli(None)("snapshot", "list", "--data-dir", str(d))
    assert r.exit_code == ExitStatus.USAGE, r.output
    assert f"storage: cannot read {d}: permission denied" in r.output, r.output
    assert "Traceback" not in r.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root is never denied by file modes")
def test_real_permission_denied_in_real_processes(tmp_path) -> None:
    path = write_config(tmp_path, 1)
    node_dir = config_mod.load(path).node_dir(0)
    os.makedirs(node_dir)
    os.chmod(node_dir, 0)
    try:
        for args in (("-c", path, "node", "serve", "--node", "0"),
                     ("snapshot", "list", "--data-dir", node_dir)):
            p = run_chordctl(*args)
            err = p.stderr.decode()
            assert p.returncode == 2, err
            assert node_dir in err and "permission denied" in err and "Traceback" not in err
    finally:
        os.chmod(node_dir, 0o755)


def test_node_serve_on_data_dir_that_is_a_file_exits_2_saying_not_a_directory(
        tmp_path, run_cli, keep_logging) -> None:
    path = write_config(tmp_path, 1)
    data_dir = config_mod.load(path).storage.data_dir
    with open(data_dir, "w") as f:          # storage.data_dir names a file
        f.write("x")
    r = run_cli(path)("node", "serve", "--node", "0")
    assert r.exit_code == ExitStatus.USAGE, r.output
    assert f"storage: cannot use {data_dir}: not a directory" in r.output, r.output
    assert "File exists" not in r.output and "owner, mode" not in r.output, r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("name", ["IDENTITY", "log.0"])
def test_node_serve_with_a_directory_in_place_of_a_node_file_exits_2_saying_so(
        tmp_path, run_cli, keep_logging, name) -> None:
    path = write_config(tmp_path, 1)
    node_dir = config_mod.load(path).node_dir(0)
    os.makedirs(os.path.join(node_dir, name))
    r = run_cli(path)("node", "serve", "--node", "0")
    assert r.exit_code == ExitStatus.USAGE, r.output
    assert os.path.join(node_dir, name) in r.output, r.output
    assert "is a directory" in r.output.lower() and "owner and mode" not in r.output, r.output
    assert "Traceback" not in r.output


def test_storage_access_advice_fits_a_read_only_file_system() -> None:
    import errno

    from chordctl.core.storage import recovery
    from chordctl.errors import StorageAccessError
    e = OSError(errno.EROFS, "Read-only file system", "/ro/node-0/LOCK")
    for err in (StorageAccessError.of(e, "/ro/node-0"), recovery.access_error("/ro/x", e)):
        assert "read-only" in str(err) and "read-write" in str(err), str(err)
        assert "owner" not in str(err), str(err)
