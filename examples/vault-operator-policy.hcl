# The Vault policy the Modelseal operator logs in with (settings: policy prefix "modelseal",
# Kubernetes auth at "kubernetes/", Transit at "transit/"). It can only:
#   - manage the per-model policies and roles it creates, all named "modelseal_<ns>_<model>";
#   - list the roles of the Kubernetes auth mount (to find orphaned ones);
#   - read Transit key metadata (to tell a missing key from a missing permission).
# It can neither decrypt nor read key material. Name the operator's own policy and role
# outside the "modelseal_" prefix (as here), so that it cannot rewrite them.
#
#   vault policy write modelseal-operator examples/vault-operator-policy.hcl
#   vault write auth/kubernetes/role/modelseal-operator \
#       bound_service_account_names=modelseal-operator \
#       bound_service_account_namespaces=modelseal-system \
#       token_policies=modelseal-operator token_ttl=1h

path "sys/policies/acl/modelseal_*" {
  capabilities = ["create", "read", "update", "delete"]
}

path "auth/kubernetes/role" {
  capabilities = ["list"]
}

path "auth/kubernetes/role/modelseal_*" {
  capabilities = ["create", "read", "update", "delete"]
}

path "transit/keys/*" {
  capabilities = ["read"]
}
