{{/* Names and labels shared by every template of the chart. */}}

{{- define "shufflenet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "shufflenet.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels of monitoring objects: the chart's, the Prometheus selector's `release`, extras. */}}
{{- define "shufflenet.monitoringLabels" -}}
{{ include "shufflenet.labels" . }}
{{- with .Values.monitoring.release }}
release: {{ . | quote }}
{{- end }}
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* monitoring.enabled, checked: "auto", "true" or "false" (booleans or strings: --set and
--set-string both work). */}}
{{- define "shufflenet.monitoringEnabled" -}}
{{- $v := toString .Values.monitoring.enabled -}}
{{- if not (has $v (list "auto" "true" "false")) -}}
{{- fail (printf "monitoring.enabled: %q is not one of auto (when the cluster serves the Prometheus Operator's kinds), true, false" $v) -}}
{{- end -}}
{{- $v -}}
{{- end -}}

{{/*
"true" when the Prometheus Operator object of kind .kind is rendered (.root: the chart's
context), else empty. monitoring.enabled true renders it always, false never, auto when the
cluster serves the kind, so that `helm install` with the defaults works on a cluster without
the Prometheus Operator's CRDs (an object of a kind the API server does not serve fails the
whole release: "resource mapping not found"). helm install/upgrade fill
.Capabilities.APIVersions from the API server's discovery: every served group version, and
"<group version>/<Kind>" for every kind in it (helm's action.GetVersionSet), so a cluster
serving PodMonitor but not PrometheusRule gets the PodMonitors only. `helm template` knows
no cluster: `--api-versions monitoring.coreos.com/v1` (the group version without any of its
kinds, which discovery never gives) stands for all the kinds, or name each kind.
*/}}
{{- define "shufflenet.prometheusOperatorServes" -}}
{{- $enabled := include "shufflenet.monitoringEnabled" .root -}}
{{- $gv := "monitoring.coreos.com/v1" -}}
{{- $served := .root.Capabilities.APIVersions -}}
{{- $kindsListed := false -}}
{{- range $served -}}
{{- if hasPrefix (printf "%s/" $gv) . -}}{{- $kindsListed = true -}}{{- end -}}
{{- end -}}
{{- $kindServed := $served.Has (printf "%s/%s" $gv .kind) -}}
{{- $groupAlone := and ($served.Has $gv) (not $kindsListed) -}}
{{- if or (eq $enabled "true") (and (eq $enabled "auto") (or $kindServed $groupAlone)) -}}
true
{{- end -}}
{{- end -}}

{{- define "shufflenet.monitoringNamespace" -}}
{{- .Values.monitoring.namespace | default .Release.Namespace -}}
{{- end -}}

{{/* The operator's pod labels. The operator PodMonitor selects by monitoring.operator.podLabels (a subset of these by default, without the release: it can watch an operator another release installed). */}}
{{- define "shufflenet.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "shufflenet.operatorLabels" -}}
{{ include "shufflenet.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "shufflenet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "shufflenet.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/*
What the operator does in the namespaces it watches: the jobs (kopf lists and watches them;
the controller reads each, writes its status, deletes it after ttlSecondsAfterFinished), the
rank pods (watched; created, deleted on restarts), the headless Service and rank-table
ConfigMap (read, created; the ConfigMap rewritten), Events (the controller's and kopf's),
and Volcano PodGroups for gang scheduling. And `update` on the jobs' `finalizers`
subresource, which no API call serves: the OwnerReferencesPermissionEnforcement admission
plugin (on in OpenShift and other strict clusters) checks it before it lets anyone create an
object whose owner reference sets blockOwnerDeletion, as every child's does. Nothing else:
no update of any object, no deletecollection, no secrets.
*/}}
{{- define "shufflenet.operatorNamespacedRules" -}}
- apiGroups: [training.shufflenet.io]
  resources: [shufflenettrainingjobs]
  verbs: [get, list, watch, delete]
- apiGroups: [training.shufflenet.io]
  resources: [shufflenettrainingjobs/status]
  verbs: [patch]
- apiGroups: [training.shufflenet.io]
  resources: [shufflenettrainingjobs/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, create, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, create]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [scheduling.volcano.sh]
  resources: [podgroups]
  verbs: [get, create]
{{- end -}}

{{/*
Cluster-scoped reads of kopf itself: it watches CustomResourceDefinitions to notice resources
appearing and going, and, when it watches only some namespaces, lists and watches Namespaces
to follow them. (API discovery, which it also reads, is open to every authenticated user.)
*/}}
{{- define "shufflenet.operatorClusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
# Quarantine reads the Ready condition and device allocatable of a failed rank's node.
- apiGroups: [""]
  resources: [nodes]
  verbs: [get]
{{- if .Values.operator.watchNamespaces }}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end -}}

{{/*
An image reference: <global.imageRegistry>/<repository>:<tag>[@<digest>], the tag defaulting
to the chart's appVersion. The registry is required: no image of this chart is in a registry
the chart could name for you. Called with (dict "root" $ "image" <values of one image>).
*/}}
{{- define "shufflenet.image" -}}
{{- $registry := required "global.imageRegistry: required, the registry holding the images (e.g. --set global.imageRegistry=registry.internal:5000; docs/install.md)" .root.Values.global.imageRegistry -}}
{{- $ref := printf "%s/%s:%s" (trimSuffix "/" $registry) .image.repository (.image.tag | default .root.Chart.AppVersion | toString) -}}
{{- with .image.digest }}{{ $ref = printf "%s@%s" $ref . }}{{ end -}}
{{- $ref -}}
{{- end -}}
