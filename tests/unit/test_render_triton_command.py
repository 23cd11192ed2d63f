"""Triton's rendered entrypoint really turns core dumps off (run with the real /bin/sh)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelseal.render.manifests import CORE_DUMPS_OFF, TRITON_COMMAND

PROBE = (
    "import resource, sys; soft, hard = resource.getrlimit(resource.RLIMIT_CORE); "
    "print(soft, hard); print(sys.argv[1:])"
)


def test_the_wrapper_sets_rlimit_core_to_zero_and_passes_args_unchanged() -> None:
    assert TRITON_COMMAND == ("/bin/sh", "-c", CORE_DUMPS_OFF, "tritonserver")
    args = ["--http-restricted-api=a,b:X-Token=t0k$en", "with space", "'q'", '"$HOME"']
    argv = ["/bin/sh", "-c", CORE_DUMPS_OFF, sys.executable, "-c", PROBE, *args]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout
    limits, passed = out.splitlines()
    assert limits == "0 0"  # soft and hard: the program cannot raise it again
    assert passed == repr(args)


def _can_raise_hard_limits() -> bool:
    """CAP_SYS_RESOURCE (bit 24) in this process's effective set (model pods drop it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)
    return os.geteuid() == 0


@pytest.mark.skipif(
    _can_raise_hard_limits(), reason="CAP_SYS_RESOURCE may raise a hard limit (pods drop ALL)"
)
def test_the_program_cannot_raise_the_limit_again() -> None:
    raise_it = (
        "import resource\n"
        "try:\n"
        "    resource.setrlimit(resource.RLIMIT_CORE, (1 << 20, 1 << 20))\n"
        "    print('raised')\n"
        "except (ValueError, OSError):\n"
        "    print('refused')\n"
    )
    argv = ["/bin/sh", "-c", CORE_DUMPS_OFF, sys.executable, "-c", raise_it]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout
    assert out.strip() == "refused"
