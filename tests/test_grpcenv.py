"""gRPC's environment for chordctl's own processes (chordctl/grpcenv.py)."""

from __future__ import annotations

import subprocess
import sys

import grpc

from chordctl import grpcenv


def test_the_listener_default_is_given_only_to_releases_that_have_the_experiment():
    for release, wanted in [((1, 85), grpcenv.LISTENER), ((1, 80), grpcenv.LISTENER),
                            ((1, 89), grpcenv.LISTENER), ((1, 79), None), ((1, 90), None),
                            ((2, 0), None)]:
        env: dict[str, str] = {}
        grpcenv.defaults(env, release)
        assert env.get("GRPC_EXPERIMENTS") == wanted, release


def test_a_value_in_the_environment_wins_even_an_empty_one():
    for value in ("", "-event_engine_client", "event_engine_listener"):
        env = {"GRPC_EXPERIMENTS": value}
        grpcenv.defaults(env, (1, 85))
        assert env == {"GRPC_EXPERIMENTS": value}


def test_the_release_is_read_without_importing_grpc():
    major, minor = (int(x) for x in grpc.__version__.split(".")[:2])
    assert grpcenv.grpcio_release() == (major, minor)
    code = ("import sys, chordctl.grpcenv as g; r = g.grpcio_release(); "
            "print(r is not None and 'grpc' not in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "True"


# Prints what GRPC_EXPERIMENTS was at the moment grpc was first imported
# (its first submodule: grpcenv's find_spec("grpc") looks, it imports nothing).
_WHEN_GRPC_LOADS = """
import os, sys
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("grpc.") and not seen:
            seen.append(os.environ.get("GRPC_EXPERIMENTS"))
        return None
sys.meta_path.insert(0, Spy())
{imp}
print(seen[0] if seen else "not-loaded", "grpc" in sys.modules)
"""


def test_the_cli_sets_it_before_grpc_loads_and_a_library_user_keeps_its_own():
    """The CLI (and the nodes it starts) run with the default, set before
    grpc is first imported (grpc reads it then); a process that only
    imports the client library is left as it was."""
    code = _WHEN_GRPC_LOADS
    env = {k: v for k, v in __import__("os").environ.items() if k != "GRPC_EXPERIMENTS"}
    expected = grpcenv.LISTENER if grpcenv.LISTENER_RELEASES[0] <= grpcenv.grpcio_release() \
        < grpcenv.LISTENER_RELEASES[1] else "None"
    cli = subprocess.run([sys.executable, "-c", code.format(imp="import chordctl.cli.main")],
                         capture_output=True, text=True, timeout=60, env=env, check=True)
    assert cli.stdout.split() == [expected, "True"]
    lib = subprocess.run([sys.executable, "-c",
                          code.format(imp="import chordctl; chordctl.connect")],
                         capture_output=True, text=True, timeout=60, env=env, check=True)
    assert lib.stdout.split() == ["None", "True"]
