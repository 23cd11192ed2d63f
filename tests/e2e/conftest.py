"""End-to-end fixtures: the whole Modelseal stack of `make demo`, for one test module.

`story` is a `modelseal_devenv.demo.Stack` on the session's Kubernetes cluster (its own
namespace), with its own Vault (persistent storage, so a test can restart it), its own
Redis and S3 server, and the operator running as a child process. The tests of a module
share it and run in file order: each one continues the story where the previous one left it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelseal_devenv.demo import Stack


@pytest.fixture(scope="module")
def story(kube_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir: Path = tmp_path_factory.mktemp("e2e-story")
    stack = Stack(workdir, kube=kube_cluster, namespace=f"e2e-{uuid.uuid4().hex[:8]}")
    stack.show_pod_events = False
    try:
        stack.start_vault()
        stack.start_redis()
        stack.start_s3()
        stack.install_crds()
        stack.start_operator()
        yield stack
    finally:
        stack.stop()
