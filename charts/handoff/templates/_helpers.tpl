{{/*
The chart's name, shortened to the 63 characters a label value may hold.
*/}}
{{- define "handoff.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name: the release name when it already
contains the chart name (release "handoff" gives handoff-manager, as
config/default does), else "<release>-<chart>". Object names append
"-manager" or "-nodeagent", so leave them room under 63 characters.
*/}}
{{- define "handoff.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "handoff.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "handoff.labels" -}}
helm.sh/chart: {{ include "handoff.chart" . }}
{{ include "handoff.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: handoff
{{- end }}

{{/*
Labels that select the release's objects; a workload adds its
app.kubernetes.io/component. Selectors are immutable: never add a label
here that changes between upgrades.
*/}}
{{- define "handoff.selectorLabels" -}}
app.kubernetes.io/name: {{ include "handoff.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The image of both workloads, with an explicit tag: image.tag, else the
chart's appVersion. "latest" is refused here as well as in the schema,
since appVersion is not covered by the schema.
*/}}
{{- define "handoff.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString }}
{{- if or (eq $tag "") (eq $tag "latest") }}
{{- fail (printf "image tag %q: pin a version (image.tag or the chart's appVersion)" $tag) }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/*
Service account names.
*/}}
{{- define "handoff.manager.serviceAccountName" -}}
{{- if .Values.manager.serviceAccount.create }}
{{- default (printf "%s-manager" (include "handoff.fullname" .)) .Values.manager.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.manager.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "handoff.nodeagent.serviceAccountName" -}}
{{- if .Values.nodeAgent.serviceAccount.create }}
{{- default (printf "%s-nodeagent" (include "handoff.fullname" .)) .Values.nodeAgent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.nodeAgent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the webhook's Service and MutatingWebhookConfiguration, and of the
Secret with its serving certificate.
*/}}
{{- define "handoff.webhook.name" -}}
{{- printf "%s-webhook" (include "handoff.fullname" .) }}
{{- end }}

{{- define "handoff.webhook.certSecret" -}}
{{- printf "%s-webhook-cert" (include "handoff.fullname" .) }}
{{- end }}
