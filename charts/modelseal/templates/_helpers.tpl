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
  * a model's Deployment and Service are named after its ProtectedModel, so the model's
    ReplicaSets are named <ProtectedModel name>-<pod-template-hash> and its Pods
    <ProtectedModel name>-<pod-template-hash>-<suffix>, where hash and suffix use only
    Kubernetes' "safe" alphabet (bcdfghjklmnpqrstvwxz2456789). The guards take the
    ProtectedModels of the request's namespace as their parameters (paramKind), so they know
    which ServiceAccounts and Pods are a model's without any label a tenant could edit. For
    CONNECT requests the API server shows a policy only the target's name (for proxy
    requests [scheme:]name[:port]) and the request's options, hence the name patterns;
  * a model's ServiceAccount is named <ProtectedModel name>-<first 8 characters of its
    metadata.uid> (modelseal.cel.modelServiceAccount): the uid exists only once the
    ProtectedModel does, so nobody can plant a workload under that name beforehand;
  * every object it owns carries a controller ownerReference to its ProtectedModel;
  * model Pods carry the labels of modelseal.modelPodSelector, plus exactly the label keys
    of modelseal.cel.modelPodLabelKeys (values of modelseal.cel.modelPodLabels where
    known), and the gateway's metrics container port is named modelseal.modelPodMetricsPort.
*/}}
{{- define "modelseal.modelPodSelector" -}}
app.kubernetes.io/name: modelseal-model
app.kubernetes.io/managed-by: modelseal-operator
{{- end }}

{{- define "modelseal.modelPodMetricsPort" -}}
metrics
{{- end }}

{{/* The "safe" alphabet of generated name parts (pod-template-hash, pod suffix). */}}
{{- define "modelseal.cel.safeChars" -}}
bcdfghjklmnpqrstvwxz2456789
{{- end }}

{{/* CEL: the name of the ServiceAccount of the model params. The one place that knows it;
every policy that needs it defines variables.modelServiceAccount with this. The API server
gives the policies their params whole, metadata.uid included
(tests/integration/test_admission.py shows the guards refusing under that name). */}}
{{- define "modelseal.cel.modelServiceAccount" -}}
params.metadata.name + '-' + params.metadata.uid.substring(0, 8)
{{- end }}

{{/* CEL: is the pod (or proxy target [scheme:]pod[:port]) named request.name one of the
pods of the model params? */}}
{{- define "modelseal.cel.isModelPodName" -}}
request.name.matches('^(https?:)?' + params.metadata.name + '-[{{ include "modelseal.cel.safeChars" . }}-]+(:[^:]*)?$')
{{- end }}

{{/* CEL: is the name (a CEL string expression, the argument) the name of a ReplicaSet of
the model params' Deployment? */}}
{{- define "modelseal.cel.isModelReplicaSetName" -}}
{{ . }}.matches('^' + params.metadata.name + '-[{{ include "modelseal.cel.safeChars" . }}]+$')
{{- end }}

{{/* CEL: is the Pod object (a CEL expression, the argument: object or oldObject) one of
the model params' pods, by any of its marks: its name, its ServiceAccount, its model label,
its controlling ReplicaSet? Needs variables.modelServiceAccount. On UPDATE the guards ask
this of oldObject (and object), so a pod cannot drop out of the guard by first changing
the mark. */}}
{{- define "modelseal.cel.isModelPod" -}}
({{ . }}.metadata.name.matches('^' + params.metadata.name + '-[{{ include "modelseal.cel.safeChars" . }}-]+$') || (has({{ . }}.spec.serviceAccountName) && {{ . }}.spec.serviceAccountName == variables.modelServiceAccount) || (has({{ . }}.metadata.labels) && 'modelseal.io/model' in {{ . }}.metadata.labels && {{ . }}.metadata.labels['modelseal.io/model'] == params.metadata.name) || (has({{ . }}.metadata.ownerReferences) && {{ . }}.metadata.ownerReferences.exists(r, r.kind == 'ReplicaSet' && {{ include "modelseal.cel.isModelReplicaSetName" "r.name" }})))
{{- end }}

{{/* CEL map: the labels of the model params' pods whose values are known here. */}}
{{- define "modelseal.cel.modelPodLabels" -}}
{'app.kubernetes.io/name': 'modelseal-model', 'modelseal.io/model': string(params.metadata.name), 'app.kubernetes.io/instance': string(params.metadata.name), 'app.kubernetes.io/managed-by': 'modelseal-operator', 'app.kubernetes.io/part-of': 'modelseal'}
{{- end }}

{{/* CEL list: every label key the model's pods carry (operator's common_labels, the
version, and the ReplicaSet's pod-template-hash). A label selector that requires another
key, or another value for a key of modelseal.cel.modelPodLabels, cannot select them. */}}
{{- define "modelseal.cel.modelPodLabelKeys" -}}
['app.kubernetes.io/name', 'modelseal.io/model', 'app.kubernetes.io/instance', 'app.kubernetes.io/managed-by', 'app.kubernetes.io/part-of', 'modelseal.io/tenant', 'modelseal.io/version', 'pod-template-hash']
{{- end }}

{{/* CEL: may the label selector's matchLabels map (the argument, a CEL expression) select
the model's pods? Needs variables.podLabels and variables.podLabelKeys. */}}
{{- define "modelseal.cel.matchLabelsMaySelectModel" -}}
!{{ . }}.exists(k, !(k in variables.podLabelKeys) || (k in variables.podLabels && {{ . }}[k] != variables.podLabels[k]))
{{- end }}

{{/* CEL: may the label selector's matchExpressions list (the argument) select the
model's pods? True unless one requirement provably excludes them. */}}
{{- define "modelseal.cel.matchExpressionsMaySelectModel" -}}
!{{ . }}.exists(e, (e.operator == 'In' && (!(e.key in variables.podLabelKeys) || (e.key in variables.podLabels && !(has(e.values) && variables.podLabels[e.key] in e.values)))) || (e.operator == 'NotIn' && e.key in variables.podLabels && has(e.values) && variables.podLabels[e.key] in e.values) || (e.operator == 'Exists' && !(e.key in variables.podLabelKeys)) || (e.operator == 'DoesNotExist' && e.key in variables.podLabelKeys))
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

{{/* The admission objects' annotations: kept on `helm uninstall` with admission.keep. */}}
{{- define "modelseal.admission.keepAnnotation" -}}
{{- if .Values.admission.keep }}
annotations:
  helm.sh/resource-policy: keep
{{- end }}
{{- end }}

{{/* The Secret with the platform's audit key (templates/audit-key.yaml or an existing one). */}}
{{- define "modelseal.audit.keySecretName" -}}
{{- if .Values.audit.hmacKeySecret.name }}
{{- .Values.audit.hmacKeySecret.name }}
{{- else }}
{{- printf "%s-audit-key" (include "modelseal.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
