{{/* Chart name, overridable. */}}
{{- define "wharf.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the operator's resources: release-chart, unless the release name already holds the chart name. */}}
{{- define "wharf.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "wharf.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every resource of the release; each resource adds its app.kubernetes.io/component. */}}
{{- define "wharf.baseLabels" -}}
helm.sh/chart: {{ include "wharf.chart" . }}
app.kubernetes.io/name: {{ include "wharf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wharf
{{- end -}}

{{/* Labels of the operator's resources. */}}
{{- define "wharf.labels" -}}
{{ include "wharf.baseLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Labels that select the operator's pods; never change them in an upgrade (selectors are immutable). */}}
{{- define "wharf.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wharf.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "wharf.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wharf.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "wharf.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* True (non-empty) when the operator watches every namespace. */}}
{{- define "wharf.clusterWide" -}}
{{- if not .Values.operator.watchNamespaces -}}true{{- end -}}
{{- end -}}
