{{/*
The chart's Redis auth Secret (username, password, users.acl; templates/redis.yaml). The
operator reads it by name (MODELSEAL_REDIS_AUTH_SECRET, a Role for that one name in the
release namespace) and copies username and password into <model>-redis-auth in each
namespace of a model with quotaStore redis, mounted into the gateway only.
*/}}
{{- define "modelseal.redis.authSecretName" -}}
{{- printf "%s-auth" (include "modelseal.redis.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Which namespaces may reach the chart's Redis (with the model pod labels): the watched
namespaces by name when operator.watchNamespaces is set, else redis.clientNamespaceSelector
(default {}: every namespace).
*/}}
{{- define "modelseal.redis.clientNamespaceSelector" -}}
{{- if .Values.operator.watchNamespaces }}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: In
    values:
      {{- toYaml .Values.operator.watchNamespaces | nindent 6 }}
{{- else if .Values.redis.clientNamespaceSelector }}
{{- toYaml .Values.redis.clientNamespaceSelector }}
{{- else }}
{}
{{- end }}
{{- end }}
