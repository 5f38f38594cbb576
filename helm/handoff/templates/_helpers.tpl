{{/* The release's full name, the prefix of every object. */}}
{{- define "handoff.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "handoff.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: handoff
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* One service's objects' name; call with (dict "root" $ "name" "ingest"). */}}
{{- define "handoff.serviceName" -}}
{{- include "handoff.fullname" .root }}-{{ .name }}
{{- end -}}

{{/* The labels of one service's objects; call with (dict "root" $ "name" "ingest"). */}}
{{- define "handoff.serviceLabels" -}}
{{ include "handoff.labels" .root }}
app.kubernetes.io/name: {{ .name }}
{{- end -}}

{{/* The selector of one service's pods; call with (dict "root" $ "name" "ingest"). */}}
{{- define "handoff.selector" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "handoff.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "handoff.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "handoff.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
What the chart knows of each service, keyed as under .Values.services: its name, its command,
whether it serves an HTTP API (then on 8080), the variables it takes from the Secret (variable
name: key under .Values.secret.keys), and the queue it consumes ({pipelineNamespace}.{queue}), which
queue-depth autoscaling watches. Every service has its admin server (/healthz, /readyz, /metrics)
on 9090.
*/}}
{{- define "handoff.catalog" -}}
ingest:
  name: ingest
  command: [handoff-ingest]
  http: true
normalizer:
  name: normalizer
  command: [handoff-normalizer]
  http: false
  queue: normalizer
crmWriter:
  name: crm-writer
  command: [handoff-crm-writer]
  http: false
  queue: crm-writer
  secretEnv:
    HUBSPOT_ACCESS_TOKEN: hubspotToken
emailWriter:
  name: email-writer
  command: [handoff-email-writer]
  http: false
  queue: email-writer
  secretEnv:
    MAILCHIMP_API_KEY: mailchimpApiKey
deadLetters:
  name: dead-letters
  command: [handoff-dlq, serve]
  http: true
  queue: dead-letters
{{- end -}}

{{/* Whether a service scales on its queue's depth (KEDA) rather than on CPU. */}}
{{- define "handoff.scalesOnQueue" -}}
{{- if and .values.enabled .values.autoscaling.enabled .svc.queue (gt (int (default 0 .values.autoscaling.queueLength)) 0) -}}
true
{{- end -}}
{{- end -}}
