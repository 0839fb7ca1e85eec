{{/* Names ------------------------------------------------------------------------------------------------- */}}
{{- define "swarmgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "swarmgate.fullname" -}}
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

{{/* <fullname>-<suffix> within 52 characters (CronJob names: 52; Job pods add 11). */}}
{{- define "swarmgate.child" -}}
{{- $room := sub 51 (len .suffix) | int }}
{{- printf "%s-%s" (include "swarmgate.fullname" .root | trunc $room | trimSuffix "-") .suffix }}
{{- end }}

{{/* An engine's Deployment/Service name: <fullname>-engine-<name>, within 63 characters. */}}
{{- define "swarmgate.engineName" -}}
{{- $room := sub 55 (len .engine.name) | int }}
{{- printf "%s-engine-%s" (include "swarmgate.fullname" .root | trunc $room | trimSuffix "-") .engine.name }}
{{- end }}

{{- define "swarmgate.labels" -}}
app.kubernetes.io/name: {{ include "swarmgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "swarmgate.metaLabels" . }}
{{- end }}

{{/* Labels besides name/instance (pod templates add them to the selector labels). */}}
{{- define "swarmgate.metaLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: swarmgate
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "gateway") */}}
{{- define "swarmgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "swarmgate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Pods allowed through the engines' NetworkPolicy carry this label. */}}
{{- define "swarmgate.engineClientLabel" -}}
swarmgate.io/engine-client: "true"
{{- end }}

{{- define "swarmgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "swarmgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The swarmgate image; the default tag follows the gateway's hardware. */}}
{{- define "swarmgate.image" -}}
{{- $flavor := ternary "gpu" "cpu" (gt (int .Values.gateway.gpu.count) 0) }}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion $flavor) .Values.image.tag }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* The `helm test` pod needs only python's stdlib: the small CPU image unless one tag is pinned for all. */}}
{{- define "swarmgate.testImage" -}}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-cpu" .Chart.AppVersion) .Values.image.tag) }}
{{- end }}

{{- define "swarmgate.secretName" -}}
{{- default (include "swarmgate.child" (dict "root" . "suffix" "auth")) .Values.auth.existingSecret }}
{{- end }}

{{- define "swarmgate.hasAuthSecret" -}}
{{- if or .Values.auth.existingSecret .Values.auth.apiKeys .Values.auth.adminApiKeys }}true{{ end }}
{{- end }}

{{- define "swarmgate.specDir" -}}/etc/swarmgate/spec{{- end }}
{{- define "swarmgate.specPath" -}}{{ include "swarmgate.specDir" . }}/spec.yaml{{- end }}
{{- define "swarmgate.routerConfigPath" -}}/etc/swarmgate/router/router.yaml{{- end }}

{{- define "swarmgate.modelClaim" -}}
{{- default (include "swarmgate.child" (dict "root" . "suffix" "models")) .Values.modelCache.existingClaim }}
{{- end }}

{{- define "swarmgate.artifactsClaim" -}}
{{- default (include "swarmgate.child" (dict "root" . "suffix" "artifacts")) .Values.artifacts.existingClaim }}
{{- end }}

{{/* Checks values can't express in the schema; each failure says what to change. */}}
{{- define "swarmgate.validate" -}}
{{- if and (eq .Values.mode "split") (not .Values.engines) (not .Values.spec.raw) }}
{{- fail "mode: split needs at least one entry in `engines` (or the whole spec in `spec.raw`)" }}
{{- end }}
{{- if and (eq .Values.mode "inProcess") .Values.engines }}
{{- fail "`engines` are only deployed in mode: split; set mode: split or remove them" }}
{{- end }}
{{- if and (not .Values.spec.raw) (not .Values.spec.experts) (not .Values.engines) }}
{{- fail "the spec serves nothing: give `spec.experts`, `engines` (mode: split) or the whole spec in `spec.raw`" }}
{{- end }}
{{- $names := dict }}
{{- range .Values.engines }}
{{- if hasKey $names .name }}{{ fail (printf "engines: the name %q is used twice" .name) }}{{ end }}
{{- $_ := set $names .name true }}
{{- range .loras }}
{{- if hasKey $names .name }}{{ fail (printf "engines: the expert name %q (LoRA of an engine) is used twice" .name) }}{{ end }}
{{- $_ := set $names .name true }}
{{- end }}
{{- end }}
{{- range $k, $v := .Values.spec.experts }}
{{- if hasKey $names $k }}{{ fail (printf "spec.experts.%s: the name is already an engine's expert" $k) }}{{ end }}
{{- end }}
{{- $grace := include "swarmgate.terminationGrace" . | int }}
{{- $drain := add (int .Values.gateway.drainTimeoutS) (int .Values.gateway.preStopSleepSeconds) }}
{{- if le $grace $drain }}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must exceed gateway.preStopSleepSeconds + gateway.drainTimeoutS (%d), or in-flight requests are killed mid-drain" $grace $drain) }}
{{- end }}
{{- if and .Values.router.retrain.enabled (not .Values.artifacts.enabled) (not .Values.artifacts.existingClaim) }}
{{- fail "router.retrain needs the artifacts volume (request logs and policies): enable `artifacts`" }}
{{- end }}
{{- end }}

{{- define "swarmgate.terminationGrace" -}}
{{- if kindIs "invalid" .Values.gateway.terminationGracePeriodSeconds }}
{{- add (int .Values.gateway.drainTimeoutS) (int .Values.gateway.preStopSleepSeconds) 15 }}
{{- else }}
{{- int .Values.gateway.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* The serving spec as YAML: spec.raw, or spec.experts + one openai expert per engine (and per LoRA) + ensembles. */}}
{{- define "swarmgate.spec" -}}
{{- if .Values.spec.raw }}
{{- .Values.spec.raw }}
{{- else }}
{{- $experts := deepCopy (default dict .Values.spec.experts) }}
{{- if eq .Values.mode "split" }}
{{- range .Values.engines }}
{{- $svc := include "swarmgate.engineName" (dict "root" $ "engine" .) }}
{{- $url := printf "http://%s:%d/v1" $svc (int $.Values.engineDefaults.port) }}
{{- $cost := ternary .cost 1.0 (hasKey . "cost") }}
{{- $desc := default (printf "vLLM engine %s serving %s" .name .model) .description }}
{{- $_ := set $experts .name (dict "engine" "openai" "url" $url "model" .name "cost" $cost "description" $desc "timeout_s" $.Values.engineDefaults.timeoutS) }}
{{- range .loras }}
{{- $ldesc := default (printf "LoRA %s on vLLM engine %s" .name $svc) .description }}
{{- $_ := set $experts .name (dict "engine" "openai" "url" $url "model" .name "cost" (ternary .cost $cost (hasKey . "cost")) "description" $ldesc "timeout_s" $.Values.engineDefaults.timeoutS) }}
{{- end }}
{{- end }}
{{- end }}
{{- $spec := dict "experts" $experts }}
{{- if .Values.spec.ensembles }}
{{- $_ := set $spec "ensembles" .Values.spec.ensembles }}
{{- end }}
{{- toYaml $spec }}
{{- end }}
{{- end }}

{{/* The first expert's name: the default model of `helm test`. */}}
{{- define "swarmgate.testModel" -}}
{{- if .Values.tests.model }}
{{- .Values.tests.model }}
{{- else }}
{{- $spec := include "swarmgate.spec" . | fromYaml }}
{{- $names := keys (default dict $spec.experts) | sortAlpha }}
{{- if .Values.engines }}{{ (first .Values.engines).name }}{{ else if $names }}{{ first $names }}{{ end }}
{{- end }}
{{- end }}

{{/* Writable scratch for a read-only root filesystem: caches and /tmp on emptyDirs. */}}
{{- define "swarmgate.cacheEnv" -}}
- name: HOME
  value: /cache/home
- name: XDG_CACHE_HOME
  value: /cache
- name: XDG_CONFIG_HOME
  value: /cache/config
- name: TMPDIR
  value: /tmp
- name: TRITON_CACHE_DIR
  value: /cache/triton
- name: TORCHINDUCTOR_CACHE_DIR
  value: /cache/torchinductor
- name: VLLM_CACHE_ROOT
  value: /cache/vllm
- name: NUMBA_CACHE_DIR
  value: /cache/numba
- name: MPLCONFIGDIR
  value: /cache/matplotlib
{{- end }}

{{/* Probe block: (dict "probe" .Values.x.readinessProbe "path" "/ready" "port" "http") */}}
{{- define "swarmgate.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
periodSeconds: {{ .probe.periodSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
{{- end }}
