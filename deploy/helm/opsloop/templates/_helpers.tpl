{{/* Names, labels and the checks every template relies on. */}}

{{- define "opsloop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "opsloop.fullname" -}}
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

{{/* The objects of one role group: <fullname>-<group>, a DNS label. */}}
{{- define "opsloop.groupName" -}}
{{- printf "%s-%s" (include "opsloop.fullname" .root) .group | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "opsloop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "opsloop.labels" -}}
helm.sh/chart: {{ include "opsloop.chart" .root }}
{{ include "opsloop.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/* .group may be empty for release-wide objects. */}}
{{- define "opsloop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "opsloop.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .group }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "opsloop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "opsloop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "opsloop.secretName" -}}
{{- default (include "opsloop.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{- define "opsloop.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* "true" when the group runs the role (itself or through `all`), else "". */}}
{{- define "opsloop.hasRole" -}}
{{- if or (has .role .group.roles) (has "all" .group.roles) }}true{{ end }}
{{- end }}

{{/* Whether any config file is set (then the config ConfigMap exists). */}}
{{- define "opsloop.hasConfig" -}}
{{- with .Values.config }}
{{- if or .targets .policy .signals .chatops .prometheusQueries }}true{{ end }}
{{- end }}
{{- end }}

{{/* Config keys: values key, file name in the ConfigMap, variable. */}}
{{- define "opsloop.configFiles" -}}
- {key: targets, file: targets.toml, env: OPSLOOP_TARGETS_FILE}
- {key: policy, file: policy.toml, env: OPSLOOP_POLICY_FILE}
- {key: signals, file: signals.toml, env: OPSLOOP_SIGNALS_FILE}
- {key: chatops, file: chatops.toml, env: OPSLOOP_CHATOPS_FILE}
- {key: prometheusQueries, file: prometheus-queries.toml, env: OPSLOOP_PROMETHEUS_QUERIES}
{{- end }}

{{/* Checks the schema cannot express; fails the render with the reason. */}}
{{- define "opsloop.validate" -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (add 2 (mul 2 (int .Values.shutdownGraceSeconds))) }}
{{- fail "terminationGracePeriodSeconds must exceed twice shutdownGraceSeconds plus 2: a process gives work in hand the grace, then its relay the grace again, and Kubernetes would kill it first" }}
{{- end }}
{{- $names := list }}
{{- $librarians := 0 }}
{{- $api := false }}
{{- range .Values.roleGroups }}
{{- if has .name $names }}
{{- fail (printf "roleGroups: the name %q is used twice" .name) }}
{{- end }}
{{- $names = append $names .name }}
{{- if include "opsloop.hasRole" (dict "group" . "role" "librarian") }}
{{- $librarians = add $librarians (ternary 1 (int .replicas) (not (hasKey . "replicas"))) }}
{{- end }}
{{- if include "opsloop.hasRole" (dict "group" . "role" "api") }}
{{- $api = true }}
{{- end }}
{{- end }}
{{- if gt (int $librarians) 1 }}
{{- fail "the librarian role must run in one process: one group, one replica (two could store an older past-case text over a newer one)" }}
{{- end }}
{{- if not .Values.secret.existingSecret }}
{{- if or (not .Values.secret.databaseUrl) (not .Values.secret.natsUrl) }}
{{- fail "set secret.existingSecret (a Secret with database-url, nats-url, tokens.toml), or secret.databaseUrl and secret.natsUrl" }}
{{- end }}
{{- if and $api (not .Values.secret.tokens) }}
{{- fail "a group runs the api role: set secret.tokens (the tokens file) or secret.existingSecret" }}
{{- end }}
{{- end }}
{{- end }}
