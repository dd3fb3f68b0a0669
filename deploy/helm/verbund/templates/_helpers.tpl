{{/* Names and labels. */}}
{{- define "verbund.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "verbund.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "<fullname>-<component>"; call with (list $ "coordinator"). */}}
{{- define "verbund.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "verbund.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "verbund.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels; call with (list $ "coordinator"). */}}
{{- define "verbund.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "verbund.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels; call with (list $ "coordinator"). */}}
{{- define "verbund.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "verbund.chart" $root }}
{{ include "verbund.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: verbund
{{- end -}}

{{- define "verbund.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "verbund.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "verbund.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Checks shared by both roles. */}}
{{- define "verbund.validate" -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (int .Values.drainSeconds) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed drainSeconds (%v), or running queries are killed mid-drain" .Values.terminationGracePeriodSeconds .Values.drainSeconds) -}}
{{- end -}}
{{- end -}}

{{/*
Mount points inside the container. Every path in the rendered TOML is absolute, so the
config's own directory does not matter.
*/}}
{{- define "verbund.paths.config" -}}/etc/verbund/config{{- end -}}
{{- define "verbund.paths.tls" -}}/etc/verbund/tls{{- end -}}
{{- define "verbund.paths.jwks" -}}/etc/verbund/jwks{{- end -}}
{{- define "verbund.paths.jwksCa" -}}/etc/verbund/jwks-ca{{- end -}}
{{- define "verbund.paths.policy" -}}/etc/verbund/policy{{- end -}}
{{- define "verbund.paths.proxyCredentials" -}}/etc/verbund/proxy{{- end -}}
{{- define "verbund.paths.proxyCa" -}}/etc/verbund/proxy-ca{{- end -}}
{{/*
The writable state volume (the audit PVC): the log in audit/, its signing key apart from it in
keys/; for a node also its noise key (keys/) and its privacy-budget ledger (privacy/).
*/}}
{{- define "verbund.paths.state" -}}/var/lib/verbund{{- end -}}

{{/*
The node's differential-privacy state on the state volume: top-level keys of node.toml, so
they come before its first [table]. Both files are created by verbund on first start; the
defaults (beside the config, a read-only ConfigMap) would keep the node from starting.
*/}}
{{- define "verbund.privacyToml" -}}
noise_key = {{ printf "%s/keys/noise.key" (include "verbund.paths.state" .) | toJson }}
ledger = {{ printf "%s/privacy/budget.redb" (include "verbund.paths.state" .) | toJson }}
{{- end -}}

{{/*
Refuses an inline policy that is not TOML or releases raw numbers (profile "test-only-raw":
synthetic test data only, never a deployment). A policy in existingConfigMap is not visible
to the chart. Call with the node values.
*/}}
{{- define "verbund.validatePolicy" -}}
{{- if and .policy.inline (not .policy.existingConfigMap) }}
{{- $policy := fromToml .policy.inline }}
{{- if hasKey $policy "Error" }}
{{- fail (printf "node.policy.inline is not valid TOML: %s" (get $policy "Error")) }}
{{- end }}
{{- if eq (toString (get $policy "profile")) "test-only-raw" }}
{{- fail "node.policy.inline: profile \"test-only-raw\" releases raw, unprotected numbers; it is for tests on synthetic data and is never deployed by this chart (use \"dp\" or \"feasibility\")" }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The [audit] section; call with the role's audit values. */}}
{{- define "verbund.auditToml" -}}
[audit]
dir = {{ printf "%s/audit" (include "verbund.paths.state" .) | toJson }}
key = {{ printf "%s/keys/audit-signing.key" (include "verbund.paths.state" .) | toJson }}
max_segment_mb = {{ int .maxSegmentMb }}
checkpoint_every = {{ int .checkpointEvery }}
checkpoint_seconds = {{ int .checkpointSeconds }}
{{- end -}}

{{/* Name of the audit log's PVC; call with (list $ "coordinator"). */}}
{{- define "verbund.auditClaimName" -}}
{{- $root := index . 0 -}}
{{- $role := index . 1 -}}
{{- $p := (index $root.Values $role).audit.persistence -}}
{{- default (printf "%s-audit" (include "verbund.componentName" (list $root $role))) $p.existingClaim -}}
{{- end -}}

{{/*
The audit log's PersistentVolumeClaim, unless an existing one is named; call with
(list $ "coordinator").
*/}}
{{- define "verbund.auditPvc" -}}
{{- $root := index . 0 -}}
{{- $role := index . 1 -}}
{{- $p := (index $root.Values $role).audit.persistence -}}
{{- if not $p.existingClaim }}
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ include "verbund.auditClaimName" . }}
  labels:
    {{- include "verbund.labels" . | nindent 4 }}
  {{- if or $p.keepOnUninstall $p.annotations }}
  annotations:
    {{- if $p.keepOnUninstall }}
    # The audit log (and a node's budget ledger and noise key) outlive the release:
    # `helm uninstall` leaves this claim.
    helm.sh/resource-policy: keep
    {{- end }}
    {{- with $p.annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  accessModes:
    {{- toYaml $p.accessModes | nindent 4 }}
  {{- if eq $p.storageClass "-" }}
  storageClassName: ""
  {{- else if $p.storageClass }}
  storageClassName: {{ $p.storageClass | quote }}
  {{- end }}
  resources:
    requests:
      storage: {{ required (printf "%s.audit.persistence.size is required (or existingClaim)" $role) $p.size | quote }}
{{- end }}
{{- end -}}

{{/*
The [tls] section's file lines; call with the role's tls values. TOML strings are written
with toJson: a JSON string is a valid TOML basic string.
*/}}
{{- define "verbund.tlsToml" -}}
ca = {{ printf "%s/%s" (include "verbund.paths.tls" .) .caKey | toJson }}
cert = {{ printf "%s/%s" (include "verbund.paths.tls" .) .certKey | toJson }}
key = {{ printf "%s/%s" (include "verbund.paths.tls" .) .keyKey | toJson }}
{{- end -}}

{{/* The [auth] section; call with (list "coordinator" $roleValues.auth). */}}
{{- define "verbund.authToml" -}}
{{- $role := index . 0 -}}
{{- $auth := index . 1 -}}
[auth]
issuer = {{ required (printf "%s.auth.issuer is required (the `iss` of researchers' tokens)" $role) $auth.issuer | toJson }}
audience = {{ required (printf "%s.auth.audience is required" $role) $auth.audience | toJson }}
{{- if and $auth.jwksUrl $auth.jwksConfigMap.name }}
{{- fail (printf "%s.auth: set jwksUrl or jwksConfigMap.name, not both" $role) }}
{{- else if $auth.jwksUrl }}
jwks_url = {{ $auth.jwksUrl | toJson }}
jwks_refresh_seconds = {{ int $auth.jwksRefreshSeconds }}
{{- else if $auth.jwksConfigMap.name }}
jwks_file = {{ printf "%s/jwks.json" (include "verbund.paths.jwks" .) | toJson }}
{{- else }}
{{- fail (printf "%s.auth: set jwksUrl (the identity provider's JWKS URL) or jwksConfigMap.name" $role) }}
{{- end }}
{{- if $auth.jwksCaConfigMap.name }}
jwks_ca = {{ printf "%s/ca.pem" (include "verbund.paths.jwksCa" .) | toJson }}
{{- end }}
leeway_seconds = {{ int $auth.leewaySeconds }}
{{- with $auth.algorithms }}
algorithms = {{ toJson . }}
{{- end }}
{{- end -}}

{{/* Volumes for TLS and token keys; call with the role's values. */}}
{{- define "verbund.authVolumes" -}}
- name: tls
  secret:
    secretName: {{ required "tls.existingSecret is required (the chart never generates keys)" .tls.existingSecret }}
    # Readable by the fsGroup (65532), not by others.
    defaultMode: 0440
    items:
      - key: {{ .tls.caKey }}
        path: {{ .tls.caKey }}
      - key: {{ .tls.certKey }}
        path: {{ .tls.certKey }}
      - key: {{ .tls.keyKey }}
        path: {{ .tls.keyKey }}
{{- if .auth.jwksConfigMap.name }}
- name: jwks
  configMap:
    name: {{ .auth.jwksConfigMap.name }}
    items:
      - key: {{ .auth.jwksConfigMap.key }}
        path: jwks.json
{{- end }}
{{- if .auth.jwksCaConfigMap.name }}
- name: jwks-ca
  configMap:
    name: {{ .auth.jwksCaConfigMap.name }}
    items:
      - key: {{ .auth.jwksCaConfigMap.key }}
        path: ca.pem
{{- end }}
{{- end -}}

{{/*
Mounts matching verbund.authVolumes. No subPath: a renewed Secret then reaches the files,
and verbund picks the new certificate up (tls_reload_seconds).
*/}}
{{- define "verbund.authMounts" -}}
- name: tls
  mountPath: {{ include "verbund.paths.tls" . }}
  readOnly: true
{{- if .auth.jwksConfigMap.name }}
- name: jwks
  mountPath: {{ include "verbund.paths.jwks" . }}
  readOnly: true
{{- end }}
{{- if .auth.jwksCaConfigMap.name }}
- name: jwks-ca
  mountPath: {{ include "verbund.paths.jwksCa" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Environment shared by both roles; call with $. */}}
{{- define "verbund.env" -}}
- name: VERBUND_JSON_LOGS
  value: {{ .Values.logging.json | quote }}
- name: RUST_LOG
  value: {{ .Values.logging.level | quote }}
{{- end -}}

{{/*
The node's proxy settings, checked as verbund checks them (security/src/egress): nothing
beside proxy = "direct", proxy_ca only for an https:// (or the environment's) proxy, no_proxy
only with a configured proxy. Call with the node values.
*/}}
{{- define "verbund.validateProxy" -}}
{{- $proxy := .proxy | default "" -}}
{{- if and .proxyCa.configMap .proxyCa.secret }}
{{- fail "node.proxyCa: set configMap or secret, not both" }}
{{- end }}
{{- if eq $proxy "direct" }}
{{- if or .proxyCredentials.existingSecret .proxyCa.configMap .proxyCa.secret .noProxy }}
{{- fail "node.proxy is \"direct\": proxyCredentials, proxyCa and noProxy would not be used; remove them or name a proxy" }}
{{- end }}
{{- end }}
{{- if and (hasPrefix "http://" $proxy) (or .proxyCa.configMap .proxyCa.secret) }}
{{- fail "node.proxyCa is for an https:// proxy, but node.proxy is http:// (no certificate of the proxy is checked)" }}
{{- end }}
{{- if and (not $proxy) .noProxy }}
{{- fail "node.noProxy applies to the proxy named by node.proxy; without it set NO_PROXY in node.extraEnv" }}
{{- end }}
{{- end -}}

{{/* The node's proxy volumes (credentials from a Secret, CA from a ConfigMap or Secret). */}}
{{- define "verbund.proxyVolumes" -}}
{{- if .proxyCredentials.existingSecret }}
- name: proxy-credentials
  secret:
    secretName: {{ .proxyCredentials.existingSecret }}
    # Readable by the fsGroup (65532), not by others.
    defaultMode: 0440
    items:
      - key: {{ .proxyCredentials.key }}
        path: credentials
{{- end }}
{{- if .proxyCa.configMap }}
- name: proxy-ca
  configMap:
    name: {{ .proxyCa.configMap }}
    items:
      - key: {{ .proxyCa.key }}
        path: ca.pem
{{- else if .proxyCa.secret }}
- name: proxy-ca
  secret:
    secretName: {{ .proxyCa.secret }}
    defaultMode: 0440
    items:
      - key: {{ .proxyCa.key }}
        path: ca.pem
{{- end }}
{{- end -}}

{{/* Mounts matching verbund.proxyVolumes (no subPath: a rotated Secret reaches the file). */}}
{{- define "verbund.proxyMounts" -}}
{{- if .proxyCredentials.existingSecret }}
- name: proxy-credentials
  mountPath: {{ include "verbund.paths.proxyCredentials" . }}
  readOnly: true
{{- end }}
{{- if or .proxyCa.configMap .proxyCa.secret }}
- name: proxy-ca
  mountPath: {{ include "verbund.paths.proxyCa" . }}
  readOnly: true
{{- end }}
{{- end -}}
