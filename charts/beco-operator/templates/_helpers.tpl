{{- define "beco-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "beco-operator.fullname" -}}
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

{{- define "beco-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "beco-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "beco-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "beco-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: beco
app.kubernetes.io/component: operator
{{- end }}

{{- define "beco-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "beco-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "beco-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The operator's RBAC rules, read from files/operator-rbac.yaml: a copy of the operator's
deploy/rbac/operator-rbac.yaml that `make chart-sync` writes and a test keeps identical.
Returns a YAML list of {kind, rules} for every ClusterRole and Role in that file.
*/}}
{{- define "beco-operator.rbacRoles" -}}
{{- $roles := list }}
{{- range $doc := splitList "\n---" (.Files.Get "files/operator-rbac.yaml") }}
{{- $obj := fromYaml $doc }}
{{- if and $obj (has (get $obj "kind") (list "ClusterRole" "Role")) }}
{{- $roles = append $roles (dict "kind" $obj.kind "name" $obj.metadata.name "rules" $obj.rules) }}
{{- end }}
{{- end }}
{{- toYaml (dict "roles" $roles) }}
{{- end }}

{{/* beco-operator's flags; leader election exactly when more than one replica runs. */}}
{{- define "beco-operator.args" -}}
- --metrics-port={{ .Values.metrics.port }}
- --health-port={{ .Values.healthPort }}
- --membership-wait={{ .Values.operator.membershipWait }}
{{- if .Values.operator.verbose }}
- --verbose
{{- end }}
{{- range .Values.operator.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- /* Always: an upgrade surges a second pod, and a change of replicaCount mixes old and new
pods; only the Lease keeps two operators from reconciling at once. */}}
- --leader-elect
- --lease-name={{ include "beco-operator.fullname" . }}
- --lease-namespace={{ .Release.Namespace }}
{{- end }}

{{/*
Probes: the metrics endpoint (served from process start). A standby waits for the Lease before
kopf starts, so kopf's /healthz would keep it unready: a rolling update (maxUnavailable 0) would
never retire the old pod, and standbys would make the PodDisruptionBudget block drains.
*/}}
{{- define "beco-operator.probe" -}}
httpGet: {path: /metrics, port: metrics}
{{- end }}
