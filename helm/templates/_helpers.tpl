{{/* Names ---------------------------------------------------------------------------- */}}

{{- define "idp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "idp.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 57 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 57 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 57 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The fullname is cut at 57 so that these suffixes keep names unique and within 63. */}}
{{- define "idp.redis.fullname" -}}{{ include "idp.fullname" . }}-redis{{- end -}}

{{- define "idp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "idp.labels" -}}
helm.sh/chart: {{ include "idp.chart" . }}
{{ include "idp.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "idp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "idp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: issuer
{{- end -}}

{{- define "idp.redis.labels" -}}
helm.sh/chart: {{ include "idp.chart" . }}
{{ include "idp.redis.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "idp.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "idp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "idp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "idp.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "idp.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The issuer ---------------------------------------------------------------------- */}}

{{/* The path every route hangs below: "/_services/token", or "" for a bare origin. */}}
{{- define "idp.issuerPath" -}}
{{- (urlParse .Values.issuer).path -}}
{{- end -}}

{{- define "idp.issuerHost" -}}
{{- (urlParse .Values.issuer).hostname -}}
{{- end -}}

{{/* Redis -------------------------------------------------------------------------- */}}

{{/* Where the shared state lives: existingSecret, url, bundled, or none (file store). */}}
{{- define "idp.redisMode" -}}
{{- if .Values.redis.existingSecret -}}existingSecret
{{- else if .Values.redis.url -}}url
{{- else if .Values.redis.sentinels -}}sentinel
{{- else if .Values.redis.bundled.enabled -}}bundled
{{- else -}}none
{{- end -}}
{{- end -}}

{{/* "true" when redis.url carries a password (user:password@ or ?password=). */}}
{{- define "idp.redisUrlHasCredentials" -}}
{{- $url := .Values.redis.url -}}
{{- if or (contains "@" $url) (contains "password" (lower $url)) -}}true{{- end -}}
{{- end -}}

{{/* "true" when the chart creates the <fullname>-redis Secret (bundled, or a URL with a password). */}}
{{- define "idp.redisSecretCreated" -}}
{{- $mode := include "idp.redisMode" . -}}
{{- if or (eq $mode "bundled") (and (eq $mode "url") (include "idp.redisUrlHasCredentials" .)) -}}true{{- end -}}
{{- end -}}

{{/* The Secret and key that hold IDP_REDIS_URL, as "name/key"; empty when it is not secret. */}}
{{- define "idp.redisUrlSecretRef" -}}
{{- if eq (include "idp.redisMode" .) "existingSecret" -}}
{{- printf "%s/%s" .Values.redis.existingSecret .Values.redis.existingSecretKey -}}
{{- else if include "idp.redisSecretCreated" . -}}
{{- printf "%s/IDP_REDIS_URL" (include "idp.redis.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The most pods that may run at once: the file store allows one. */}}
{{- define "idp.maxReplicas" -}}
{{- if .Values.autoscaling.enabled -}}{{ .Values.autoscaling.maxReplicas }}{{- else -}}{{ .Values.replicaCount }}{{- end -}}
{{- end -}}

{{/* Secrets ------------------------------------------------------------------------ */}}

{{- define "idp.secretName" -}}
{{- default (include "idp.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/*
The decoded value of one key of a live Secret, or nothing. On install and upgrade Helm reads
the cluster, so generated values survive upgrades; `helm template` and client dry-runs read
nothing, so there they are generated anew (see README, GitOps).
*/}}
{{- define "idp.liveSecretValue" -}}
{{- $secret := lookup "v1" "Secret" .ctx.Release.Namespace .name -}}
{{- if and $secret $secret.data -}}
{{- with index $secret.data .key -}}{{ . | b64dec }}{{- end -}}
{{- end -}}
{{- end -}}

{{/* The claim policy ---------------------------------------------------------------- */}}

{{/*
The ConfigMap and key holding the claims file (IDP_CLAIMS_FILE) as "name/key": the chart's
own <fullname>-claims (config.claims) or the operator's (config.claimsExistingConfigMap);
empty without a claim policy. (A ConfigMap name may be 253 long: the suffix is safe.)
*/}}
{{- define "idp.claimsConfigMapRef" -}}
{{- if .Values.config.claims -}}
{{- printf "%s-claims/claims.yaml" (include "idp.fullname" .) -}}
{{- else if and .Values.config.claimsExistingConfigMap .Values.config.claimsExistingConfigMap.name -}}
{{- printf "%s/%s" .Values.config.claimsExistingConfigMap.name .Values.config.claimsExistingConfigMap.key -}}
{{- end -}}
{{- end -}}

{{/* Where the pod sees the claims file. */}}
{{- define "idp.claimsFile" -}}/etc/idp/claims/claims.yaml{{- end -}}

{{/* Checks ------------------------------------------------------------------------- */}}

{{/* Refuse values that would install a broken or unsafe issuer, naming the fix. */}}
{{- define "idp.validate" -}}
{{- $issuer := .Values.issuer -}}
{{- $u := urlParse $issuer -}}
{{- $example := "set issuer to e.g. https://ci.example.com/_services/token" -}}
{{- if not (or (eq $u.scheme "https") (and (eq $u.scheme "http") .Values.allowInsecureIssuer)) -}}
{{- fail (printf "issuer %q is not https: AWS trusts only https issuers; %s (allowInsecureIssuer=true permits http for a development cluster only)" $issuer $example) -}}
{{- end -}}
{{- if not $u.hostname -}}
{{- fail (printf "issuer %q has no host: %s" $issuer $example) -}}
{{- end -}}
{{- if or $u.query $u.fragment (contains "?" $issuer) (contains "#" $issuer) -}}
{{- fail (printf "issuer %q has a query or fragment, which OIDC forbids: %s" $issuer $example) -}}
{{- end -}}
{{- if $u.userinfo -}}
{{- fail (printf "issuer %q carries credentials: remove the user:password@ part" $issuer) -}}
{{- end -}}
{{- if hasSuffix "/" $issuer -}}
{{- fail (printf "issuer %q ends with '/': drop it; iss must match what AWS stores exactly" $issuer) -}}
{{- end -}}
{{- if and .Values.redis.url .Values.redis.existingSecret -}}
{{- fail "redis.url and redis.existingSecret are both set: keep one (existingSecret for a URL with a password)" -}}
{{- end -}}
{{- if and .Values.redis.sentinels (or .Values.redis.url .Values.redis.existingSecret) -}}
{{- fail "redis.sentinels and redis.url (or redis.existingSecret) are both set: keep redis.sentinels with redis.sentinelMaster for Sentinel, or the URL for one Redis" -}}
{{- end -}}
{{- if and .Values.redis.sentinels (not .Values.redis.sentinelMaster) -}}
{{- fail "redis.sentinels is set but redis.sentinelMaster is not: set it to the master's name in the sentinels' `sentinel monitor <name> ...` line, e.g. mymaster" -}}
{{- end -}}
{{- range $entry := .Values.redis.sentinels -}}
{{- if not (regexMatch "^([A-Za-z0-9][A-Za-z0-9._-]*|\\[[0-9A-Fa-f:]+\\])(:[0-9]{1,5})?$" (toString $entry)) -}}
{{- fail (printf "redis.sentinels entry %q is not host:port: list them as sentinel-0.example.com:26379" (toString $entry)) -}}
{{- end -}}
{{- end -}}
{{- $max := int (include "idp.maxReplicas" .) -}}
{{- if and (gt $max 1) (eq (include "idp.redisMode" .) "none") -}}
{{- $setting := ternary (printf "autoscaling.maxReplicas=%d" $max) (printf "replicaCount=%d" $max) .Values.autoscaling.enabled -}}
{{- fail (printf "%s needs Redis: replicas cannot share the file key store. Set redis.url (or redis.existingSecret) to a shared Redis, or redis.sentinels, or redis.bundled.enabled=true, or run one replica" $setting) -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail (printf "autoscaling.minReplicas=%d is above autoscaling.maxReplicas=%d: lower it" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- range $part := splitList "," .Values.secrets.ciSecret -}}
{{- if and (trim $part) (lt (len (trim $part)) 32) -}}
{{- fail "secrets.ciSecret holds a secret shorter than 32 characters: generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`" -}}
{{- end -}}
{{- end -}}
{{- range $part := splitList "," .Values.secrets.keyEncryptionKey -}}
{{- if and (trim $part) (lt (len (trim $part)) 32) -}}
{{- fail "secrets.keyEncryptionKey holds a key shorter than 32 characters: generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.config.claims .Values.config.claimsExistingConfigMap .Values.config.claimsExistingConfigMap.name -}}
{{- fail "config.claims and config.claimsExistingConfigMap.name are both set: keep one (the policy in the values, or the name of your ConfigMap holding it)" -}}
{{- end -}}
{{- if and (include "idp.claimsConfigMapRef" .) (hasKey .Values.config.extra "IDP_CLAIMS_FILE") -}}
{{- fail "config.extra.IDP_CLAIMS_FILE and a claim policy (config.claims or config.claimsExistingConfigMap) are both set: remove config.extra.IDP_CLAIMS_FILE, the chart sets it" -}}
{{- end -}}
{{- with .Values.config.claims -}}
{{- /* As the issuer: IDP_SUBJECT_CLAIMS starts with the identity claims, unless a rule
       without match applies to every token (IDP_SUBJECT_CLAIMS is then never used). */ -}}
{{- $identity := .identity | default (list "repo") -}}
{{- $catchAll := false -}}
{{- range .subjects -}}{{- if not .match -}}{{- $catchAll = true -}}{{- end -}}{{- end -}}
{{- $subject := $.Values.config.subjectClaims -}}
{{- $head := slice $subject 0 (min (len $identity) (len $subject)) -}}
{{- if and (not $catchAll) (ne (join "," $head) (join "," $identity)) -}}
{{- fail (printf "config.subjectClaims (%s) must start with config.claims.identity (%s) so that every subject names its owner: set it to e.g. [%s], or end config.claims.subjects with a rule without match" (join "," $subject) (join "," $identity) (join ", " $identity)) -}}
{{- end -}}
{{- end -}}
{{- range $name, $_ := .Values.config.extra -}}
{{- if or (hasPrefix "IDP_CI_SECRET" $name) (hasPrefix "IDP_KEY_ENCRYPTION_KEY" $name) (hasPrefix "IDP_REDIS_URL" $name) (hasPrefix "IDP_REDIS_PASSWORD" $name) (hasPrefix "IDP_REDIS_SENTINEL_PASSWORD" $name) -}}
{{- fail (printf "config.extra.%s would put a secret in the ConfigMap: use secrets.* or redis.* instead" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
