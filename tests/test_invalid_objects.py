# ruff: noqa: E501  (kube-apiserver's messages are quoted whole)
"""
The common mistakes, each refused as kube-apiserver 1.32 refuses it: a table of
invalid objects created through the API's verbs in memory (body decoding,
fieldValidation, schema checks, metadata and each kind's rules), each with the
field path and words kube-apiserver answers with; valid realistic manifests
still pass; and the checkers on their own.
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyChannel

from k3stw.apiserver.catalogue.types import time_error
from k3stw.apiserver.kinds.cronjobs import ScheduleError, check_schedule
from k3stw.apiserver.objectmeta import dns1035_label_name, dns_label_name, path_segment_name
from k3stw.apiserver.request import APIRequest, decode_json
from k3stw.apiserver.reviews import is_review
from k3stw.apiserver.status import StatusError
from k3stw.apiserver.verbs import Target, Verbs
from k3stw.machinery.objects import Object
from k3stw.machinery.quantity import QuantityError, parse_quantity
from tests.support.apiserver import MemoryServer
from tests.test_api_clients import ServerTestCase
from tests.test_catalogue_unknown import _group_version, _manifests

SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
QUANTITY = (
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)


def pod_spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "web", "image": "nginx:1.27"}]}
    spec.update(changes)
    return spec


def container(**changes: Any) -> dict[str, Any]:
    return {"name": "web", "image": "nginx:1.27", **changes}


def pod(spec: dict[str, Any] | None = None, **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", **metadata},
        "spec": spec if spec is not None else pod_spec(),
    }


def workload(kind: str, template_spec: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": template_spec or pod_spec()},
    }
    body.update(spec)
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "web"}, "spec": body}


def job(template_spec: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    template = template_spec or pod_spec(restartPolicy="Never")
    body = {"template": {"spec": template}, **spec}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"}, "spec": body}


def cronjob(schedule: str = "*/5 * * * *", name: str = "tick", **spec: Any) -> dict[str, Any]:
    body = {
        "schedule": schedule,
        "jobTemplate": {"spec": {"template": {"spec": pod_spec(restartPolicy="OnFailure")}}},
        **spec,
    }
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name}, "spec": body}


def service(**spec: Any) -> dict[str, Any]:
    body = {"ports": [{"port": 80}], "selector": {"app": "web"}, **spec}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": body}


def ingress_path(**path: Any) -> dict[str, Any]:
    """An Ingress with one rule of one path (C{path}) to the web service."""
    backend = {"service": {"name": "web", "port": {"number": 80}}}
    rule = {"http": {"paths": [{"backend": backend, **path}]}}
    return obj("networking.k8s.io/v1", "Ingress", spec={"rules": [rule]})


def obj(api: str, kind: str, name: str = "x", **fields: Any) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name}, **fields}


#: (what, plural, object, HTTP code, kube-apiserver's message)
INVALID: list[tuple[str, str, dict[str, Any], int, str]] = [
    # Metadata
    (
        "name not a DNS subdomain",
        "configmaps",
        obj("v1", "ConfigMap", "My_App"),
        422,
        f'metadata.name: Invalid value: "My_App": {SUBDOMAIN}',
    ),
    (
        "no name",
        "configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}},
        422,
        "metadata.name: Required value: name or generateName is required",
    ),
    (
        "generateName not a prefix of a subdomain",
        "configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "Web-"}},
        422,
        'metadata.generateName: Invalid value: "Web-": a lowercase RFC 1123 subdomain',
    ),
    (
        "label value with a space",
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "labels": {"app": "my app"}},
        },
        422,
        'metadata.labels: Invalid value: "my app": a valid label must be an empty string or consist',
    ),
    (
        "label key with two slashes",
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "labels": {"a/b/c": "x"}},
        },
        422,
        'metadata.labels: Invalid value: "a/b/c": a qualified name must consist of',
    ),
    (
        "label value too long",
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "labels": {"a": "v" * 64}},
        },
        422,
        "must be no more than 63 characters",
    ),
    (
        "annotation key not qualified",
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "annotations": {"my key": "v"}},
        },
        422,
        'metadata.annotations: Invalid value: "my key": name part must consist of',
    ),
    (
        "annotations over 256 KiB",
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "annotations": {"big": "x" * (256 * 1024)}},
        },
        422,
        "metadata.annotations: Too long: may not be more than 262144 bytes",
    ),
    (
        "finalizer name with a space",
        "configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "finalizers": ["my finalizer"]},
        },
        422,
        'metadata.finalizers: Invalid value: "my finalizer": name part must consist of',
    ),
    (
        "namespace name with a dot",
        "namespaces",
        obj("v1", "Namespace", "team.a"),
        422,
        'metadata.name: Invalid value: "team.a": a lowercase RFC 1123 label must consist of',
    ),
    (
        "service name starting with a digit",
        "services",
        {**service(), "metadata": {"name": "1web"}},
        422,
        'metadata.name: Invalid value: "1web": a DNS-1035 label must consist of lower case',
    ),
    # Decoding: types, formats, duplicates
    (
        "replicas as a string",
        "deployments",
        workload("Deployment", replicas="three"),
        422,
        'spec.replicas: Invalid value: "string": spec.replicas in body must be of type integer: "string"',
    ),
    (
        "a quantity with words",
        "pods",
        pod(pod_spec(containers=[container(resources={"limits": {"cpu": "2 cpus"}})])),
        400,
        f'Pod in version "v1" cannot be handled as a Pod: {QUANTITY}',
    ),
    (
        "a quantity with an unknown suffix",
        "pods",
        pod(pod_spec(containers=[container(resources={"requests": {"memory": "1.2.3Gi"}})])),
        400,
        "unable to parse quantity's suffix",
    ),
    (
        "targetPort as a boolean",
        "services",
        service(ports=[{"port": 80, "targetPort": True}]),
        422,
        "spec.ports[0].targetPort in body must be of type integer,string",
    ),
    (
        "unknown field (Strict)",
        "deployments",
        {**workload("Deployment"), "spex": {}},
        400,
        'strict decoding error: unknown field "spex"',
    ),
    # Required fields (schemas)
    (
        "pod without containers",
        "pods",
        pod({}),
        422,
        "spec.containers: Required value",
    ),
    (
        "container without a name",
        "pods",
        pod(pod_spec(containers=[{"image": "nginx"}])),
        422,
        "spec.containers[0].name: Required value",
    ),
    (
        "env var without a name",
        "pods",
        pod(pod_spec(containers=[container(env=[{"value": "1"}])])),
        422,
        "spec.containers[0].env[0].name: Required value",
    ),
    (
        "volume mount without a path",
        "pods",
        pod(
            pod_spec(
                containers=[container(volumeMounts=[{"name": "data"}])],
                volumes=[{"name": "data", "emptyDir": {}}],
            )
        ),
        422,
        "spec.containers[0].volumeMounts[0].mountPath: Required value",
    ),
    (
        "Deployment without a selector",
        "deployments",
        {
            **workload("Deployment"),
            "spec": {"template": workload("Deployment")["spec"]["template"]},
        },
        422,
        "spec.selector: Required value",
    ),
    (
        "CronJob without a schedule",
        "cronjobs",
        {**cronjob(), "spec": {"jobTemplate": cronjob()["spec"]["jobTemplate"]}},
        422,
        "spec.schedule: Required value",
    ),
    (
        "Role rule without verbs",
        "roles",
        obj(
            "rbac.authorization.k8s.io/v1",
            "Role",
            rules=[{"apiGroups": [""], "resources": ["pods"]}],
        ),
        422,
        "rules[0].verbs: Required value: verbs must contain at least one value",
    ),
    (
        "RoleBinding subject without a name",
        "rolebindings",
        obj(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
            subjects=[{"kind": "User"}],
        ),
        422,
        "subjects[0].name: Required value",
    ),
    (
        "Ingress path without pathType",
        "ingresses",
        ingress_path(path="/"),
        422,
        "spec.rules[0].http.paths[0].pathType: Required value",
    ),
    (
        "Ingress rule without paths",
        "ingresses",
        obj(
            "networking.k8s.io/v1",
            "Ingress",
            spec={"rules": [{"host": "a.example.com", "http": {}}]},
        ),
        422,
        "spec.rules[0].http.paths: Required value",
    ),
    (
        "HPA metric without a type",
        "horizontalpodautoscalers",
        obj(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "maxReplicas": 3,
                "metrics": [{"resource": {"name": "cpu", "target": {"type": "Utilization"}}}],
            },
        ),
        422,
        "spec.metrics[0].type: Required value",
    ),
    (
        "HPA target without a kind",
        "horizontalpodautoscalers",
        obj(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            spec={"scaleTargetRef": {"name": "web"}, "maxReplicas": 3},
        ),
        422,
        "spec.scaleTargetRef.kind: Required value",
    ),
    (
        "NetworkPolicy ipBlock without a cidr",
        "networkpolicies",
        obj(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            spec={"podSelector": {}, "ingress": [{"from": [{"ipBlock": {}}]}]},
        ),
        422,
        "spec.ingress[0].from[0].ipBlock.cidr: Required value",
    ),
    (
        "StorageClass without a provisioner",
        "storageclasses",
        obj("storage.k8s.io/v1", "StorageClass"),
        422,
        "provisioner: Required value",
    ),
    (
        "PDB selector requirement without an operator",
        "poddisruptionbudgets",
        obj(
            "policy/v1",
            "PodDisruptionBudget",
            spec={"minAvailable": 1, "selector": {"matchExpressions": [{"key": "app"}]}},
        ),
        422,
        "spec.selector.matchExpressions[0].operator: Required value",
    ),
    (
        "toleration-free taint key missing on a Node",
        "nodes",
        obj("v1", "Node", "n1", spec={"taints": [{"effect": "NoSchedule"}]}),
        422,
        "spec.taints[0].key: Required value",
    ),
    # Pod specs
    (
        "container name with capitals",
        "pods",
        pod(pod_spec(containers=[container(name="Web")])),
        422,
        'spec.containers[0].name: Invalid value: "Web": a lowercase RFC 1123 label must consist of',
    ),
    (
        "container named twice",
        "pods",
        pod(pod_spec(containers=[container(), container()])),
        422,
        'spec.containers[1].name: Duplicate value: "web"',
    ),
    (
        "pod container without an image",
        "pods",
        pod(pod_spec(containers=[{"name": "web"}])),
        422,
        "spec.containers[0].image: Required value",
    ),
    (
        "containerPort out of range",
        "pods",
        pod(pod_spec(containers=[container(ports=[{"containerPort": 70000}])])),
        422,
        "spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive",
    ),
    (
        "port name too long",
        "pods",
        pod(
            pod_spec(
                containers=[
                    container(ports=[{"containerPort": 80, "name": "a-very-long-port-name"}])
                ]
            )
        ),
        422,
        'spec.containers[0].ports[0].name: Invalid value: "a-very-long-port-name": must be no more than 15 characters',
    ),
    (
        "port name twice",
        "pods",
        pod(
            pod_spec(
                containers=[
                    container(
                        ports=[
                            {"containerPort": 80, "name": "http"},
                            {"containerPort": 81, "name": "http"},
                        ]
                    )
                ]
            )
        ),
        422,
        'spec.containers[0].ports[1].name: Duplicate value: "http"',
    ),
    (
        "protocol HTTP",
        "pods",
        pod(pod_spec(containers=[container(ports=[{"containerPort": 80, "protocol": "HTTP"}])])),
        422,
        'spec.containers[0].ports[0].protocol: Unsupported value: "HTTP": supported values: "SCTP", "TCP", "UDP"',
    ),
    (
        "requests above limits",
        "pods",
        pod(
            pod_spec(
                containers=[container(resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1"}})]
            )
        ),
        422,
        'spec.containers[0].resources.requests: Invalid value: "2": must be less than or equal to cpu limit of 1',
    ),
    (
        "memory request above limit, canonical units",
        "pods",
        pod(
            pod_spec(
                containers=[
                    container(
                        resources={"requests": {"memory": "1024Mi"}, "limits": {"memory": "512Mi"}}
                    )
                ]
            )
        ),
        422,
        'Invalid value: "1Gi": must be less than or equal to memory limit of 512Mi',
    ),
    (
        "a resource that is not one",
        "pods",
        pod(pod_spec(containers=[container(resources={"limits": {"cpus": "1"}})])),
        422,
        'spec.containers[0].resources.limits[cpus]: Invalid value: "cpus": must be a standard resource for containers',
    ),
    (
        "negative request",
        "pods",
        pod(pod_spec(containers=[container(resources={"requests": {"memory": "-1Gi"}})])),
        422,
        'spec.containers[0].resources.requests[memory]: Invalid value: "-1Gi": must be greater than or equal to 0',
    ),
    (
        "mount of an undeclared volume",
        "pods",
        pod(
            pod_spec(containers=[container(volumeMounts=[{"name": "data", "mountPath": "/data"}])])
        ),
        422,
        'spec.containers[0].volumeMounts[0].name: Not found: "data"',
    ),
    (
        "volume named twice",
        "pods",
        pod(pod_spec(volumes=[{"name": "data", "emptyDir": {}}, {"name": "data", "emptyDir": {}}])),
        422,
        'spec.volumes[1].name: Duplicate value: "data"',
    ),
    (
        "restartPolicy Sometimes",
        "pods",
        pod(pod_spec(restartPolicy="Sometimes")),
        422,
        'spec.restartPolicy: Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never"',
    ),
    (
        "imagePullPolicy Sometimes",
        "pods",
        pod(pod_spec(containers=[container(imagePullPolicy="Sometimes")])),
        422,
        'spec.containers[0].imagePullPolicy: Unsupported value: "Sometimes": supported values: "Always", "IfNotPresent", "Never"',
    ),
    (
        "init container restartPolicy OnFailure",
        "pods",
        pod(pod_spec(initContainers=[container(name="init", restartPolicy="OnFailure")])),
        422,
        'spec.initContainers[0].restartPolicy: Unsupported value: "OnFailure": supported values: "Always"',
    ),
    (
        "container restartPolicy",
        "pods",
        pod(pod_spec(containers=[container(restartPolicy="Always")])),
        422,
        "spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers",
    ),
    (
        "probe on an init container that is no sidecar",
        "pods",
        pod(
            pod_spec(
                initContainers=[container(name="init", readinessProbe={"exec": {"command": ["x"]}})]
            )
        ),
        422,
        "spec.initContainers[0].readinessProbe: Forbidden: may not be set for init containers "
        "without restartPolicy=Always",
    ),
    (
        "preStop sleep longer than the grace period",
        "pods",
        pod(pod_spec(containers=[container(lifecycle={"preStop": {"sleep": {"seconds": 40}}})])),
        422,
        "spec.containers[0].lifecycle.preStop.sleep: Invalid value: 40: must be greater than 0 "
        "and less than terminationGracePeriodSeconds (30)",
    ),
    # Workloads
    (
        "selector not matching the template",
        "deployments",
        workload("Deployment", selector={"matchLabels": {"app": "api"}}),
        422,
        'spec.template.metadata.labels: Invalid value: map[string]string{"app":"web"}: `selector` does not match template `labels`',
    ),
    (
        "Deployment template restarting Never",
        "deployments",
        workload("Deployment", pod_spec(restartPolicy="Never")),
        422,
        'spec.template.spec.restartPolicy: Unsupported value: "Never": supported values: "Always"',
    ),
    (
        "negative replicas",
        "deployments",
        workload("Deployment", replicas=-1),
        422,
        "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
    ),
    (
        "negative minReadySeconds",
        "deployments",
        workload("Deployment", minReadySeconds=-5),
        422,
        "spec.minReadySeconds: Invalid value: -5: must be greater than or equal to 0",
    ),
    (
        "maxSurge and maxUnavailable both 0",
        "deployments",
        workload(
            "Deployment",
            strategy={
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0},
            },
        ),
        422,
        "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0",
    ),
    (
        "strategy Blue",
        "deployments",
        workload("Deployment", strategy={"type": "Blue"}),
        422,
        'spec.strategy.type: Unsupported value: "Blue": supported values: "Recreate", "RollingUpdate"',
    ),
    (
        "maxUnavailable over 100%",
        "deployments",
        workload(
            "Deployment",
            strategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "150%"}},
        ),
        422,
        'spec.strategy.rollingUpdate.maxUnavailable: Invalid value: "150%": must not be greater than 100%',
    ),
    (
        "StatefulSet template restarting OnFailure",
        "statefulsets",
        workload("StatefulSet", pod_spec(restartPolicy="OnFailure"), serviceName="web"),
        422,
        'spec.template.spec.restartPolicy: Unsupported value: "OnFailure": supported values: "Always"',
    ),
    (
        "DaemonSet with a container named twice",
        "daemonsets",
        workload("DaemonSet", pod_spec(containers=[container(), container()])),
        422,
        'spec.template.spec.containers[1].name: Duplicate value: "web"',
    ),
    (
        "ReplicaSet selector not matching",
        "replicasets",
        workload("ReplicaSet", selector={"matchLabels": {"app": "other"}}),
        422,
        "`selector` does not match template `labels`",
    ),
    (
        "Job without a restart policy",
        "jobs",
        job(pod_spec()),
        422,
        'spec.template.spec.restartPolicy: Required value: valid values: "OnFailure", "Never"',
    ),
    (
        "Job restarting Always",
        "jobs",
        job(pod_spec(restartPolicy="Always")),
        422,
        'spec.template.spec.restartPolicy: Required value: valid values: "OnFailure", "Never"',
    ),
    (
        "Job with a negative backoffLimit",
        "jobs",
        job(backoffLimit=-1),
        422,
        "spec.backoffLimit: Invalid value: -1: must be greater than or equal to 0",
    ),
    (
        "CronJob schedule of one field",
        "cronjobs",
        cronjob("bad"),
        422,
        'spec.schedule: Invalid value: "bad": expected exactly 5 fields, found 1: [bad]',
    ),
    (
        "CronJob minute 70",
        "cronjobs",
        cronjob("70 * * * *"),
        422,
        'spec.schedule: Invalid value: "70 * * * *": end of range (70) above maximum (59): 70',
    ),
    (
        "CronJob unknown descriptor",
        "cronjobs",
        cronjob("@often"),
        422,
        'spec.schedule: Invalid value: "@often": unrecognized descriptor: @often',
    ),
    (
        "CronJob name over 52 characters",
        "cronjobs",
        cronjob(name="n" * 53),
        422,
        'metadata.name: Invalid value: "' + "n" * 53 + '": must be no more than 52 characters',
    ),
    (
        "CronJob job template restarting Always",
        "cronjobs",
        {
            **cronjob(),
            "spec": {
                "schedule": "@hourly",
                "jobTemplate": {"spec": {"template": {"spec": pod_spec(restartPolicy="Always")}}},
            },
        },
        422,
        "spec.jobTemplate.spec.template.spec.restartPolicy: Required value",
    ),
    # Services
    (
        "Service without ports",
        "services",
        service(ports=[]),
        422,
        "spec.ports: Required value",
    ),
    (
        "Service ports unnamed",
        "services",
        service(ports=[{"port": 80}, {"port": 443}]),
        422,
        "spec.ports[0].name: Required value",
    ),
    (
        "Service port names twice",
        "services",
        service(ports=[{"name": "web", "port": 80}, {"name": "web", "port": 443}]),
        422,
        'spec.ports[1].name: Duplicate value: "web"',
    ),
    (
        "Service port 0",
        "services",
        service(ports=[{"port": 0}]),
        422,
        "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
    ),
    (
        "Service targetPort out of range",
        "services",
        service(ports=[{"port": 80, "targetPort": 99999}]),
        422,
        "spec.ports[0].targetPort: Invalid value: 99999: must be between 1 and 65535, inclusive",
    ),
    (
        "Service type Public",
        "services",
        service(type="Public"),
        422,
        'spec.type: Unsupported value: "Public": supported values: "ClusterIP", "ExternalName", "LoadBalancer", "NodePort"',
    ),
    (
        "ExternalName without a name",
        "services",
        service(type="ExternalName", ports=[]),
        422,
        "spec.externalName: Required value",
    ),
    # The catalogue's kinds
    (
        "Role rule with an empty verb list",
        "roles",
        obj(
            "rbac.authorization.k8s.io/v1",
            "Role",
            rules=[{"apiGroups": [""], "resources": ["pods"], "verbs": []}],
        ),
        422,
        "rules[0].verbs: Required value: verbs must contain at least one value",
    ),
    (
        "RoleBinding to a kind of role that does not exist",
        "rolebindings",
        obj(
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Roles", "name": "r"},
        ),
        422,
        'roleRef.kind: Unsupported value: "Roles": supported values: "Role", "ClusterRole"',
    ),
    (
        "ClusterRoleBinding to a Role",
        "clusterrolebindings",
        obj(
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
        ),
        422,
        'roleRef.kind: Unsupported value: "Role": supported values: "ClusterRole"',
    ),
    (
        "ClusterRoleBinding of a service account without its namespace",
        "clusterrolebindings",
        obj(
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            roleRef={
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "view",
            },
            subjects=[{"kind": "ServiceAccount", "name": "bot"}],
        ),
        422,
        "subjects[0].namespace: Required value",
    ),
    (
        "ClusterRole name with a slash",
        "clusterroles",
        obj("rbac.authorization.k8s.io/v1", "ClusterRole", "a/b"),
        422,
        "metadata.name: Invalid value: \"a/b\": may not contain '/'",
    ),
    (
        "claim without access modes",
        "persistentvolumeclaims",
        obj("v1", "PersistentVolumeClaim", spec={"resources": {"requests": {"storage": "1Gi"}}}),
        422,
        "spec.accessModes: Required value: at least 1 access mode is required",
    ),
    (
        "claim without a storage request",
        "persistentvolumeclaims",
        obj("v1", "PersistentVolumeClaim", spec={"accessModes": ["ReadWriteOnce"]}),
        422,
        "spec.resources[storage]: Required value",
    ),
    (
        "claim with an unknown access mode",
        "persistentvolumeclaims",
        obj(
            "v1",
            "PersistentVolumeClaim",
            spec={"accessModes": ["ReadWriteAll"], "resources": {"requests": {"storage": "1Gi"}}},
        ),
        422,
        'spec.accessModes: Unsupported value: "ReadWriteAll": supported values: "ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"',
    ),
    (
        "PriorityClass above a user's range",
        "priorityclasses",
        obj("scheduling.k8s.io/v1", "PriorityClass", "top", value=2_000_000_000),
        422,
        "value: Forbidden: maximum allowed value of a user defined priority is 1000000000",
    ),
    (
        "Ingress Prefix path not absolute",
        "ingresses",
        ingress_path(path="api", pathType="Prefix"),
        422,
        'spec.rules[0].http.paths[0].path: Invalid value: "api": must be an absolute path',
    ),
    (
        "Ingress pathType Regex",
        "ingresses",
        ingress_path(path="/", pathType="Regex"),
        422,
        'spec.rules[0].http.paths[0].pathType: Unsupported value: "Regex": supported values: "Exact", "ImplementationSpecific", "Prefix"',
    ),
    (
        "Ingress host in capitals",
        "ingresses",
        obj("networking.k8s.io/v1", "Ingress", spec={"rules": [{"host": "Shop.Example.com"}]}),
        422,
        'spec.rules[0].host: Invalid value: "Shop.Example.com": a lowercase RFC 1123 subdomain',
    ),
    (
        "NetworkPolicy type In",
        "networkpolicies",
        obj(
            "networking.k8s.io/v1", "NetworkPolicy", spec={"podSelector": {}, "policyTypes": ["In"]}
        ),
        422,
        'spec.policyTypes[0]: Unsupported value: "In": supported values: "Ingress", "Egress"',
    ),
    (
        "NetworkPolicy port out of range",
        "networkpolicies",
        obj(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            spec={"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]},
        ),
        422,
        "spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
    ),
    (
        "PDB with both bounds",
        "poddisruptionbudgets",
        obj("policy/v1", "PodDisruptionBudget", spec={"minAvailable": 1, "maxUnavailable": 1}),
        422,
        "minAvailable and maxUnavailable cannot be both set",
    ),
    # ConfigMaps and Secrets
    (
        "ConfigMap key with a slash",
        "configmaps",
        obj("v1", "ConfigMap", data={"conf/app.yaml": "x"}),
        422,
        "data[conf/app.yaml]: Invalid value: \"conf/app.yaml\": a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
    ),
    (
        "ConfigMap over 1 MiB",
        "configmaps",
        obj("v1", "ConfigMap", data={"a": "x" * (1024 * 1024 + 1)}),
        422,
        "Too long: may not be more than 1048576 bytes",
    ),
    (
        "Secret key with a space",
        "secrets",
        obj("v1", "Secret", stringData={"my key": "x"}),
        422,
        'data[my key]: Invalid value: "my key": a valid config key must consist of',
    ),
    (
        "TLS Secret without its key",
        "secrets",
        obj("v1", "Secret", type="kubernetes.io/tls", stringData={"tls.crt": "x"}),
        422,
        "data[tls.key]: Required value",
    ),
]


def _request(
    method: bytes, body: bytes, mode: str = "Strict", media: str = "application/json"
) -> APIRequest:
    request = APIRequest(DummyChannel())
    request.method = method
    request.args = {b"fieldValidation": [mode.encode()]}
    request.content = io.BytesIO(body)
    request.requestHeaders.setRawHeaders(b"content-type", [media.encode()])
    return request


class APIHarness:
    """The API's verbs over an in-memory store, as a client's requests reach them."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.server = MemoryServer(case)
        self.verbs = Verbs(self.server.store, self.server.clock)

    def target(
        self, plural: str, api: str, name: str | None = None, namespace: str = "default"
    ) -> Target:
        group, _, version = api.rpartition("/")
        resource = self.server.resource(group, plural, version)
        return Target(resource, namespace if resource.namespaced else None, name, None)

    def create(
        self, plural: str, body: Object, mode: str = "Strict", raw: bytes | None = None
    ) -> APIRequest:
        request = _request(b"POST", raw if raw is not None else json.dumps(body).encode(), mode)
        namespace = (body.get("metadata") or {}).get("namespace") or "default"
        target = self.target(plural, body["apiVersion"], namespace=namespace)
        self.server.run(self.verbs.serve(request, "create", target))
        return request

    def refused(
        self, plural: str, body: Object, verb: str = "create", raw: bytes | None = None
    ) -> StatusError:
        method = b"POST" if verb == "create" else b"PUT"
        request = _request(method, raw if raw is not None else json.dumps(body).encode())
        name = None if verb == "create" else body["metadata"]["name"]
        return self.server.fails(
            self.verbs.serve(request, verb, self.target(plural, body["apiVersion"], name))
        )

    def patch(self, plural: str, api: str, name: str, patch: Object) -> StatusError:
        request = _request(
            b"PATCH", json.dumps(patch).encode(), media="application/merge-patch+json"
        )
        return self.server.fails(self.verbs.serve(request, "patch", self.target(plural, api, name)))


class InvalidObjectTests(SynchronousTestCase):
    def test_table_of_common_mistakes(self) -> None:
        """Each common mistake is refused with kube-apiserver's code, field path and words,
        and nothing is stored."""
        self.assertGreaterEqual(len(INVALID), 50)
        api = APIHarness(self)
        for what, plural, body, code, message in INVALID:
            with self.subTest(what):
                error = api.refused(plural, copy.deepcopy(body))
                self.assertEqual(
                    (error.code, message in error.message), (code, True), error.message
                )
        self.assertEqual(
            api.server.run(api.server.store.list(api.server.resource("", "pods"), "default")).items,
            [],
        )

    def test_realistic_manifests_pass(self) -> None:
        """The realistic manifests of every common kind are created as they are, with
        fieldValidation=Strict: none is refused as invalid (no false positives)."""
        api = APIHarness(self)
        for namespace in ("shop", "monitoring"):
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            api.create("namespaces", body)
        refused, created = [], 0
        # PriorityClasses first: the Priority admission plugin refuses a pod naming a missing one.
        for manifest in sorted(_manifests(), key=lambda m: m["kind"] != "PriorityClass"):
            group, version = _group_version(manifest)
            resource = api.server.registry.by_kind(group, manifest["kind"])
            if (
                resource is None
                or resource.version != version
                or manifest["kind"] == "Namespace"
                or is_review(resource)  # answered, never stored: tests/test_reviews.py
            ):
                continue
            try:
                api.create(resource.plural, copy.deepcopy(manifest))
                created += 1
            except Exception as e:
                refused.append(f"{manifest['kind']}: {e}")
        self.assertEqual(refused, [])
        self.assertGreater(created, 40)


class FieldValidationTests(SynchronousTestCase):
    BODY = (
        b'{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},'
        b'"spec":{"replicas":1,"replicas":2,"selector":{"matchLabels":{"app":"web"}},'
        b'"template":{"metadata":{"labels":{"app":"web","app":"web"}},'
        b'"spec":{"containers":[{"name":"web","image":"nginx"}]}}}}'
    )

    def test_duplicate_fields_strict(self) -> None:
        """Strict: a field named twice is a 400 in the strict decoder's words, by its path."""
        error = APIHarness(self).refused("deployments", {"apiVersion": "apps/v1"}, raw=self.BODY)
        self.assertEqual(error.code, 400)
        self.assertIn(
            'Deployment in version "v1" cannot be handled as a Deployment: strict decoding '
            'error: duplicate field "spec.replicas", duplicate field '
            '"spec.template.metadata.labels.app"',
            error.message,
        )

    def test_duplicate_fields_warn_and_ignore(self) -> None:
        """Warn: a Warning header names it; Ignore: silence; either way the last value wins."""
        api = APIHarness(self)
        warned = api.create("deployments", {"apiVersion": "apps/v1"}, mode="Warn", raw=self.BODY)
        self.assertIn(
            b'299 - "duplicate field \\"spec.replicas\\""',
            warned.responseHeaders.getRawHeaders(b"warning"),
        )
        stored = api.server.get("apps", "deployments", "web", "default")
        self.assertEqual(stored["spec"]["replicas"], 2)
        ignored = api.create(
            "deployments",
            {"apiVersion": "apps/v1"},
            mode="Ignore",
            raw=self.BODY.replace(b'"name":"web"}', b'"name":"web2"}', 1),
        )
        self.assertIsNone(ignored.responseHeaders.getRawHeaders(b"warning"))

    def test_decode_fast_path_finds_nothing(self) -> None:
        """Without duplicates, decoding reports none; with them, their paths in order."""
        found: list[str] = []
        decode_json(b'{"a":{"b":[{"c":1}]}}', found)
        self.assertEqual(found, [])
        decode_json(b'{"a":{"b":[{"c":1,"c":2}]},"a":{"b":[{"c":1,"c":3}]}}', found)
        self.assertEqual(found, ["a", "a.b[0].c"])


class UpdateRuleTests(SynchronousTestCase):
    def test_job_template_and_selector_are_immutable(self) -> None:
        api = APIHarness(self)
        api.create("jobs", job())
        created = api.server.get("batch", "jobs", "once", "default")
        changed = copy.deepcopy(created)
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:2"
        error = api.refused("jobs", changed, verb="update")
        self.assertIn(
            "spec.template: Invalid value: core.PodTemplateSpec{...}: field is immutable",
            error.message,
        )
        changed = copy.deepcopy(created)
        changed["spec"]["selector"] = {"matchLabels": {"a": "b"}}
        error = api.refused("jobs", changed, verb="update")
        self.assertIn(
            'spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{"a":"b"}, '
            "MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable",
            error.message,
        )

    def test_pod_updates_only_images(self) -> None:
        """A pod's image may change; its ports may not (kube's Forbidden)."""
        api = APIHarness(self)
        api.create("pods", pod())
        created = api.server.get("", "pods", "web", "default")
        changed = copy.deepcopy(created)
        changed["spec"]["containers"][0]["image"] = "nginx:1.28"
        request = _request(b"PUT", json.dumps(changed).encode())
        api.server.run(api.verbs.serve(request, "update", api.target("pods", "v1", "web")))
        changed = api.server.get("", "pods", "web", "default")
        changed["spec"]["containers"][0]["ports"] = [{"containerPort": 80}]
        error = api.refused("pods", changed, verb="update")
        self.assertIn(
            "spec: Forbidden: pod updates may not change fields other than "
            "`spec.containers[*].image`",
            error.message,
        )

    def test_server_side_apply_asks_required_fields_of_the_whole(self) -> None:
        """An applied configuration may leave out what the live object holds, not what
        nobody holds."""
        api = APIHarness(self)
        api.create("deployments", workload("Deployment"))

        def apply(name: str, body: Object) -> Any:
            request = _request(
                b"PATCH", json.dumps(body).encode(), media="application/apply-patch+yaml"
            )
            request.args[b"fieldManager"] = [b"me"]
            target = api.target("deployments", "apps/v1", name)
            return api.verbs.serve(request, "patch", target)

        partial = {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"minReadySeconds": 5}}
        api.server.run(apply("web", {**partial, "metadata": {"name": "web"}}))
        self.assertEqual(
            api.server.get("apps", "deployments", "web", "default")["spec"]["minReadySeconds"], 5
        )
        error = api.server.fails(apply("new", {**partial, "metadata": {"name": "new"}}))
        self.assertEqual(error.code, 422)
        self.assertIn("spec.selector: Required value", error.message)

    def test_role_ref_is_immutable(self) -> None:
        api = APIHarness(self)
        ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "a"}
        api.create(
            "rolebindings", obj("rbac.authorization.k8s.io/v1", "RoleBinding", "b", roleRef=ref)
        )
        changed = api.server.get("rbac.authorization.k8s.io", "rolebindings", "b", "default")
        changed["roleRef"]["name"] = "other"
        error = api.refused("rolebindings", changed, verb="update")
        self.assertIn(
            'roleRef: Invalid value: rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", '
            'Kind:"Role", Name:"other"}: cannot change roleRef',
            error.message,
        )

    def test_rbac_names_may_have_colons(self) -> None:
        """RBAC's names are path segments, as the bootstrap roles' (``system:...``) are."""
        api = APIHarness(self)
        api.create(
            "clusterroles", obj("rbac.authorization.k8s.io/v1", "ClusterRole", "system:x", rules=[])
        )

    def test_secret_type_is_immutable(self) -> None:
        api = APIHarness(self)
        api.create("secrets", obj("v1", "Secret", "s", stringData={"a": "b"}))
        changed = api.server.get("", "secrets", "s", "default")
        changed["type"] = "kubernetes.io/basic-auth"
        error = api.refused("secrets", changed, verb="update")
        self.assertIn(
            'type: Invalid value: "kubernetes.io/basic-auth": field is immutable', error.message
        )


class CheckerTests(SynchronousTestCase):
    def test_quantities(self) -> None:
        """Quantities parse exactly and print in kube's canonical form."""
        shown = {
            q: str(parse_quantity(q)) for q in ("0.5", "1000m", "1024Mi", "1.5Gi", "2000", "1e3")
        }
        self.assertEqual(
            shown,
            {
                "0.5": "500m",
                "1000m": "1",
                "1024Mi": "1Gi",
                "1.5Gi": "1536Mi",
                "2000": "2k",
                "1e3": "1e3",
            },
        )
        self.assertEqual(str(parse_quantity(0.25)), "250m")
        with self.assertRaises(QuantityError) as raised:
            parse_quantity("2 cpus")
        self.assertEqual(str(raised.exception), QUANTITY)

    def test_cron_schedules(self) -> None:
        for good in ("*/5 * * * *", "0 3 * * MON-FRI", "@daily", "@every 1h", "0 0 1,15 * *"):
            check_schedule(good)
        for bad, words in (
            ("* * * *", "expected exactly 5 fields, found 4: [* * * *]"),
            ("0 24 * * *", "end of range (24) above maximum (23): 24"),
            ("0 0 0 * *", "beginning of range (0) below minimum (1): 0"),
            ("5-1 * * * *", "beginning of range (5) beyond end of range (1): 5-1"),
        ):
            with self.assertRaises(ScheduleError) as raised:
                check_schedule(bad)
            self.assertEqual(str(raised.exception), words)

    def test_time_errors(self) -> None:
        self.assertEqual(
            time_error("2024-01-02 10:00:00Z"),
            'parsing time "2024-01-02 10:00:00Z" as "2006-01-02T15:04:05Z07:00": cannot parse '
            '" 10:00:00Z" as "T"',
        )

    def test_name_rules(self) -> None:
        self.assertEqual(dns_label_name("web-", True), [])
        self.assertNotEqual(dns_label_name("web-", False), [])
        self.assertNotEqual(dns1035_label_name("1web", False), [])
        self.assertEqual(path_segment_name("system:node", False), [])
        self.assertEqual(path_segment_name("a/b", False), ["may not contain '/'"])


class RealServerTests(ServerTestCase):
    """A handful of the mistakes through a real server, as kubectl and the Python client show them."""

    def apply(self, manifest: str) -> subprocess.CompletedProcess[str]:
        result: subprocess.CompletedProcess[str] = self.kubectl(
            self.root / "k3s.yaml", "apply", "-f", "-", stdin=manifest
        )
        return result

    def test_kubectl_apply_prints_kubes_errors(self) -> None:
        """kubectl apply of each common mistake fails with kube-apiserver's words; nothing is stored."""
        cases = {
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: neg}\nspec:\n"
            "  replicas: -1\n  selector: {matchLabels: {app: neg}}\n"
            "  template:\n    metadata: {labels: {app: neg}}\n"
            "    spec: {containers: [{name: c, image: nginx}]}\n": 'The Deployment "neg" is invalid: '
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: greedy}\nspec:\n  containers:\n"
            "  - name: c\n    image: nginx\n    resources:\n"
            "      requests: {cpu: '2'}\n      limits: {cpu: '1'}\n": 'The Pod "greedy" is invalid: '
            'spec.containers[0].resources.requests: Invalid value: "2": must be less than or '
            "equal to cpu limit of 1",
            "apiVersion: batch/v1\nkind: Job\nmetadata: {name: forever}\nspec:\n  template:\n"
            "    spec: {containers: [{name: c, image: busybox}]}\n": 'The Job "forever" is '
            'invalid: spec.template.spec.restartPolicy: Required value: valid values: "OnFailure", '
            '"Never"',
            "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: tick}\nspec:\n"
            "  schedule: bad\n  jobTemplate:\n    spec:\n      template:\n"
            "        spec: {restartPolicy: Never, containers: [{name: c, image: busybox}]}\n": (
                'spec.schedule: Invalid value: "bad": expected exactly 5 fields, found 1: [bad]'
            ),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: words}\nspec:\n  containers:\n"
            "  - name: c\n    image: nginx\n    resources: {limits: {cpu: 2 cpus}}\n": (
                'Pod in version "v1" cannot be handled as a Pod: quantities must match the '
                "regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
            ),
        }
        for manifest, words in cases.items():
            with self.subTest(words):
                result = self.apply(manifest)
                self.assertNotEqual(result.returncode, 0, result.stdout)
                self.assertIn(words, result.stderr)
        listed = self.kubectl(
            self.root / "k3s.yaml", "get", "pods,deploy,jobs,cronjobs", "-o", "name"
        )
        self.assertEqual(listed.stdout.strip(), "")

    def test_kubectl_update_of_an_immutable_field(self) -> None:
        """Changing a pod's ports after creation is Forbidden in kube's words."""
        pod_yaml = (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: fixed}\nspec:\n"
            "  containers: [{name: c, image: 'nginx:1.27'}]\n"
        )
        self.assertEqual(self.apply(pod_yaml).returncode, 0)
        changed = pod_yaml.replace(
            "image: 'nginx:1.27'", "image: 'nginx:1.27', ports: [{containerPort: 80}]"
        )
        result = self.apply(changed)
        self.assertIn(
            'The Pod "fixed" is invalid: spec: Forbidden: pod updates may not change fields other '
            "than `spec.containers[*].image`",
            result.stderr,
        )

    def test_python_client_sees_the_causes(self) -> None:
        """The typed client gets a 422 whose Status names each cause's field."""
        core = client.CoreV1Api(self.api())
        body = client.V1Service(
            metadata=client.V1ObjectMeta(name="twoports"),
            spec=client.V1ServiceSpec(
                ports=[client.V1ServicePort(port=80), client.V1ServicePort(port=443)]
            ),
        )
        with self.assertRaises(ApiException) as caught:
            core.create_namespaced_service("default", body)
        self.assertEqual(caught.exception.status, 422)
        status = json.loads(caught.exception.body)
        self.assertEqual(
            [(c["field"], c["message"]) for c in status["details"]["causes"]],
            [("spec.ports[0].name", "Required value"), ("spec.ports[1].name", "Required value")],
        )


class RatchetTests(SynchronousTestCase):
    def test_an_object_stored_before_a_rule_can_still_be_updated(self) -> None:
        """A Job stored without a restart policy (before the rule) still takes status
        writes and label changes; a new problem is refused."""
        server = MemoryServer(self)
        jobs = server.resource("batch", "jobs")
        stored = job(pod_spec())
        stored["metadata"]["namespace"] = "default"
        jobs.strategy.default(stored)  # as its create did
        server.run(
            server.datastore.create(
                jobs.storage_key("default", "once"), json.dumps(stored).encode()
            )
        )

        def relabel(current: Object) -> Object:
            current["metadata"]["labels"] = {"team": "a"}
            return current

        updated = server.run(server.store.guaranteed_update(jobs, "default", "once", relabel))
        self.assertEqual(updated["metadata"]["labels"], {"team": "a"})

        def break_more(current: Object) -> Object:
            current["spec"]["backoffLimit"] = -1
            return current

        error = server.fails(server.store.guaranteed_update(jobs, "default", "once", break_more))
        self.assertEqual(
            error.message,
            'Job.batch "once" is invalid: spec.backoffLimit: Invalid value: -1: must be greater '
            "than or equal to 0",
        )
