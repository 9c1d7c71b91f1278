{{/*
Names and labels shared by every object of the chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "e6observe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The base name of every object: fullnameOverride, else "<release>-<chart>" (just the release name
when it already contains the chart name). Truncated to 63 characters (DNS label limit).
*/}}
{{- define "e6observe.fullname" -}}
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

{{/* "<fullname>-<suffix>", still within 63 characters. */}}
{{- define "e6observe.suffixed" -}}
{{- $ctx := index . 0 }}{{- $suffix := index . 1 }}
{{- $base := include "e6observe.fullname" $ctx | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{- define "e6observe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the life of a release (used by the prober's Deployment). */}}
{{- define "e6observe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "e6observe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object; callers add a component and the feature's additionalLabels. */}}
{{- define "e6observe.labels" -}}
helm.sh/chart: {{ include "e6observe.chart" . }}
{{ include "e6observe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: e6observe
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The namespace of an object: the feature's own override, else the release namespace. */}}
{{- define "e6observe.namespace" -}}
{{- $ctx := index . 0 }}{{- $override := index . 1 }}
{{- default $ctx.Release.Namespace $override }}
{{- end }}

{{/* Prober objects. */}}
{{- define "e6observe.prober.fullname" -}}
{{- include "e6observe.suffixed" (list . "prober") }}
{{- end }}

{{- define "e6observe.prober.selectorLabels" -}}
{{ include "e6observe.selectorLabels" . }}
app.kubernetes.io/component: prober
{{- end }}

{{- define "e6observe.prober.image" -}}
{{- $img := .Values.prober.image }}
{{- if not $img.repository }}
{{- fail "prober.image.repository is required: e6observe publishes no image; build one with `pip install e6observe` and set its repository" }}
{{- end }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/*
One scrape endpoint (ServiceMonitor endpoints[] / PodMonitor podMetricsEndpoints[] item) from a
values section with port, path, scheme, interval, scrapeTimeout, honorLabels, tlsConfig,
basicAuth, relabelings, metricRelabelings.
*/}}
{{- define "e6observe.scrapeEndpoint" -}}
- port: {{ .port | quote }}
  path: {{ .path | quote }}
  scheme: {{ .scheme }}
  {{- with .interval }}
  interval: {{ . }}
  {{- end }}
  {{- with .scrapeTimeout }}
  scrapeTimeout: {{ . }}
  {{- end }}
  {{- if .honorLabels }}
  honorLabels: true
  {{- end }}
  {{- with .tlsConfig }}
  tlsConfig:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .basicAuth }}
  basicAuth:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .relabelings }}
  relabelings:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .metricRelabelings }}
  metricRelabelings:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
