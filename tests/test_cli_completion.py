"""Shell completion for bash/zsh/fish: click's own, as the README documents it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import run_chordctl

KV = {"create", "read", "update", "delete"}


def complete(shell: str, words: str, cword: int | str) -> list[str]:
    r = run_chordctl(env={"_CHORDCTL_COMPLETE": f"{shell}_complete", "COMP_WORDS": words,
                          "COMP_CWORD": str(cword)})
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode().splitlines()


def test_bash_completion_offers_the_kv_subcommands():
    lines = complete("bash", "chordctl kv ", 2)
    assert KV <= {line.split(",", 1)[1] for line in lines if line.startswith("plain,")}


def test_bash_completion_completes_a_group_prefix():
    assert complete("bash", "chordctl clu", 1) == ["plain,cluster"]


def test_zsh_and_fish_completion_offer_the_ring_subcommands():
    zsh = complete("zsh", "chordctl ring ", 2)
    assert "show" in zsh and "locate" in zsh
    fish = complete("fish", "chordctl ring ", "")
    assert any(line.startswith("plain,show") for line in fish)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_readme_bash_line_installs_a_working_completion(tmp_path):
    """`eval "$(_CHORDCTL_COMPLETE=bash_source chordctl)"` as the README says, in bash."""
    script = ('eval "$(_CHORDCTL_COMPLETE=bash_source chordctl)"\n'
              'COMP_WORDS=(chordctl kv ""); COMP_CWORD=2\n'
              '_chordctl_completion chordctl\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    bindir = os.path.dirname(sys.executable)
    if not os.path.exists(os.path.join(bindir, "chordctl")):
        pytest.skip("chordctl is not installed beside this interpreter")
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True,
                       env=env, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert KV <= set(r.stdout.decode().split())
