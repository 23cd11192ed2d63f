# The BROAD Vault policy for the Modelseal operator (settings: policy prefix "modelseal",
# Kubernetes auth at "kubernetes/", Transit at "transit/"), for development and for
# `tenancy.unlisted: Any`. It lets the operator manage the per-model policies and roles it
# creates ("modelseal_<ns>_<model>"), list the roles of the Kubernetes auth mount and read
# Transit key metadata; it cannot decrypt or read key material itself. But Vault does not
# look inside a policy body that a token writes: with this policy the operator may write
# ANY body under "modelseal_*" and bind it to any ServiceAccount, so a compromised operator
# gets every key of this Vault. In production generate the narrow policy from the
# platform's tenancy declaration instead (docs/tenancy.md):
#
#   modelseal vault-operator-policy values.yaml | vault policy write modelseal-operator -
#
# It pins every policy body to "decrypt with one declared key of that namespace" and every
# role to that namespace. Name the operator's own policy and role outside the
# "modelseal_" prefix (as here), so that it cannot rewrite them.
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
