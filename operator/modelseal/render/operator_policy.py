"""The operator's own Vault policy, as tight as Vault's ACLs allow for a declaration. Pure.

Vault cannot look inside a policy body that a token writes: whoever may write
``sys/policies/acl/<name>`` may grant anything, so the broad policy in
examples/vault-operator-policy.hcl hands a compromised operator every key. Vault's
``allowed_parameters`` can, however, pin a request parameter to exact values. Generated
from the tenancy declaration (`modelseal.models.tenancy`), this policy lets the operator:

* write policies ``<prefix>_<ns>_*`` only with a body that is exactly one of the
  per-model bodies for the keys declared for ``<ns>`` (decrypt with that key, nothing else);
* write roles ``<prefix>_<ns>_*`` only bound to ServiceAccounts of ``<ns>``, with the
  configured audience, ``token_policies`` from ``<prefix>_<ns>_*`` only, and no other
  parameter (no ``policies`` alias, no namespace selector, no CIDRs);
* read and delete every ``<prefix>_*`` policy and role (withdrawal and garbage collection
  of models whose namespace is no longer declared), list the roles, and read the metadata
  of the declared keys only.

What remains (docs/tenancy.md): a compromised operator can still bind a declared key of
``<ns>`` to any ServiceAccount of ``<ns>`` (its RBAC lets it run Pods there), i.e. it gets
every declared key, never an undeclared one. With ``unlisted: Any`` nothing can be pinned
and the broad rule is rendered, with a comment saying so.
"""

from __future__ import annotations

import json

from modelseal.models.tenancy import Tenancy, Unlisted
from modelseal.render.vault import policy_document


def _q(value: str) -> str:
    """An HCL string literal (JSON escapes are HCL escapes)."""
    return json.dumps(value)


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def operator_policy(
    tenancy: Tenancy,
    *,
    prefix: str,
    transit_mount: str,
    kubernetes_mount: str,
    audience: str,
) -> str:
    """HCL of the operator's Vault policy for this declaration."""
    transit = transit_mount.strip("/")
    k8s = kubernetes_mount.strip("/")
    broad = tenancy.unlisted is Unlisted.ANY
    generic = '["create", "read", "update", "delete"]' if broad else '["read", "delete"]'
    out = [
        "# The Modelseal operator's Vault policy, generated from the platform's tenancy",
        "# declaration by `modelseal vault-operator-policy` (see docs/tenancy.md).",
        "# Regenerate and rewrite it whenever the declaration changes.",
        "",
        "# Withdrawal and garbage collection: read and delete any of its policies and roles.",
    ]
    if broad:
        out += [
            "# tenancy.unlisted is Any: namespaces that are not declared may use any key, so",
            "# nothing can be pinned for them and the two rules below also let the operator",
            "# WRITE any policy body and role (a compromised operator gets every key of this",
            "# Vault). Declare every namespace and set unlisted to Refuse to narrow them.",
        ]
    out += [
        f'path "sys/policies/acl/{prefix}_*" {{',
        f"  capabilities = {generic}",
        "}",
        f'path "auth/{k8s}/role" {{',
        '  capabilities = ["list"]',
        "}",
        f'path "auth/{k8s}/role/{prefix}_*" {{',
        f"  capabilities = {generic}",
        "}",
    ]
    keys: set[str] = set()
    for ns in sorted(tenancy.namespaces):
        grant = tenancy.namespaces[ns]
        keys.update(grant.transit_keys)
        bodies = [policy_document(transit, key) for key in grant.transit_keys]
        out += [
            "",
            f"# Namespace {ns}: keys {', '.join(grant.transit_keys) or '(none)'}.",
            f'path "sys/policies/acl/{prefix}_{ns}_*" {{',
            '  capabilities = ["create", "read", "update", "delete"]',
            f'  allowed_parameters = {{ "policy" = {_list(bodies)} }}',
            "}",
            f'path "auth/{k8s}/role/{prefix}_{ns}_*" {{',
            '  capabilities = ["create", "read", "update", "delete"]',
            "  allowed_parameters = {",
            '    "bound_service_account_names" = []',
            f'    "bound_service_account_namespaces" = {_list([ns])}',
            f'    "audience" = {_list([audience])}',
            f'    "token_policies" = {_list([f"{prefix}_{ns}_*"])}',
            '    "token_ttl" = []',
            '    "token_max_ttl" = []',
            '    "token_no_default_policy" = []',
            '    "token_type" = ["service"]',
            '    "alias_name_source" = ["serviceaccount_uid"]',
            "  }",
            "}",
        ]
    out += ["", "# Key metadata (a missing key from a missing permission)."]
    for key in ["*"] if broad else sorted(keys):
        out += [f'path "{transit}/keys/{key}" {{', '  capabilities = ["read"]', "}"]
    return "\n".join(out) + "\n"
