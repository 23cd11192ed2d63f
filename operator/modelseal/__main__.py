"""``python -m modelseal ROLE`` runs one of the image's long-running roles; anything else is
the ``modelseal`` command line (seal, inspect, keys, audit, ...).

Roles (settings from ``MODELSEAL_*``; each module is imported only when chosen):

* ``operator``: the kopf operator (`modelseal.handlers.run`);
* ``unsealer``: the model pod's native sidecar (`modelseal.unsealer.run`);
* ``gateway``: the model pod's gateway (`modelseal.gateway.run`).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

ROLES = {
    "operator": "modelseal.handlers",
    "unsealer": "modelseal.unsealer",
    "gateway": "modelseal.gateway",
}


def keep_generated_client_out() -> None:
    """Make ``import kubernetes`` fail in this process. kopf imports the generated
    Kubernetes client for its type hooks whenever it is installed (~56 MB; a dev
    dependency, so in a test venv); the operator talks to the API server with its own
    client (`modelseal.k8s.api`), and this keeps it the same in a test venv as in the
    image, which lacks the package."""
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ROLES:
        if len(args) > 1 and args[1] in ("-h", "--help"):
            print(__doc__)
            return 0
        if args[0] == "operator":
            keep_generated_client_out()
        from modelseal.config import load_settings

        module = importlib.import_module(ROLES[args[0]])
        module.run(load_settings())
        return 0
    from modelseal.cli.main import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
