{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "modelseal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release name when it already contains the chart name. */}}
{{- define "modelseal.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "modelseal.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "modelseal.labels" -}}
helm.sh/chart: {{ include "modelseal.chart" . }}
app.kubernetes.io/name: {{ include "modelseal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelseal
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: pass (dict "ctx" $ "component" "operator"). */}}
{{- define "modelseal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelseal.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "modelseal.componentLabels" -}}
{{ include "modelseal.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "modelseal.operator.fullname" -}}
{{- printf "%s-operator" (include "modelseal.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "modelseal.operator.serviceAccountName" -}}
{{- default (include "modelseal.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- end }}

{{/* The operator's user name as the API server sees it (for the admission guards). */}}
{{- define "modelseal.operator.username" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "modelseal.operator.serviceAccountName" .) }}
{{- end }}

{{- define "modelseal.redis.fullname" -}}
{{- printf "%s-redis" (include "modelseal.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Image reference: (dict "image" .Values.x.image "ctx" $) -> repo@digest or repo:tag. */}}
{{- define "modelseal.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/* The chart's Redis, as a ProtectedModel's spec.gateway.redisUrl. */}}
{{- define "modelseal.redisURL" -}}
{{- printf "redis://%s.%s.svc:%d/0" (include "modelseal.redis.fullname" .) .Release.Namespace (int .Values.redis.port) }}
{{- end }}

{{/* Restricted Pod Security container settings shared by every container of the chart. */}}
{{- define "modelseal.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The contract with the operator's renderer (operator/modelseal/render/names.py), which the
admission guards, the PodMonitor and the Redis NetworkPolicy rely on:
  * a model's ServiceAccount and Deployment are named after its ProtectedModel, so the
    model's Pods are named <ProtectedModel name>-<pod-template-hash>-<suffix>, where hash
    and suffix use only Kubernetes' "safe" alphabet (bcdfghjklmnpqrstvwxz2456789). The
    guards take the ProtectedModels of the request's namespace as their parameters
    (paramKind), so they know which ServiceAccounts and Pods are a model's without any label
    a tenant could edit. For CONNECT requests the API server shows a policy only the pod's
    name and the exec/attach/port-forward options, hence the name pattern;
  * every object it owns carries a controller ownerReference to its ProtectedModel;
  * model Pods carry the labels of modelseal.modelPodSelector, and the gateway's metrics
    container port is named modelseal.modelPodMetricsPort.
*/}}
{{- define "modelseal.modelPodSelector" -}}
app.kubernetes.io/name: modelseal-model
app.kubernetes.io/managed-by: modelseal-operator
{{- end }}

{{- define "modelseal.modelPodMetricsPort" -}}
metrics
{{- end }}

{{/* CEL: is the pod named request.name one of the pods of the model params? */}}
{{- define "modelseal.cel.isModelPodName" -}}
request.name.matches('^' + params.metadata.name + '-[bcdfghjklmnpqrstvwxz2456789-]+$')
{{- end }}

{{/* Kubernetes' own controllers, under per-controller credentials
(--use-service-account-credentials, the default of kubeadm and managed clusters) or the
shared system:kube-controller-manager identity. */}}
{{- define "modelseal.controllerUser" -}}
{{- printf "system:serviceaccount:kube-system:%s" . -}}
{{- end }}

{{/* Namespace selector for the admission bindings: the watched namespaces, or all. */}}
{{- define "modelseal.admission.namespaceSelector" -}}
{{- if .Values.operator.watchNamespaces }}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: In
    values:
      {{- toYaml .Values.operator.watchNamespaces | nindent 6 }}
{{- else }}
{}
{{- end }}
{{- end }}
