"""
Objects are stored as kube-apiserver 1.32 stores them: the same input gives
the same object, field for field, its defaults filled in (facts from
``pkg/apis/<group>/<version>/defaults.go`` of release-1.32, the admission
plugins that run by default, and the fields Go always writes), never over
what the user set, on create and on every update and patch.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.allocation import ServiceAllocator
from k3stw.machinery.objects import Object
from tests.support.apiserver import MemoryServer
from tests.support.kubectl import KubectlServer

CONTAINER = {"name": "app", "image": "nginx"}

#: What kube stores of CONTAINER in a pod template.
STORED_CONTAINER = {
    **CONTAINER,
    "imagePullPolicy": "Always",
    "resources": {},
    "terminationMessagePath": "/dev/termination-log",
    "terminationMessagePolicy": "File",
}

#: A PodSpec's own defaults (a template's; a pod has more).
POD_SPEC_DEFAULTS = {
    "dnsPolicy": "ClusterFirst",
    "restartPolicy": "Always",
    "schedulerName": "default-scheduler",
    "securityContext": {},
    "terminationGracePeriodSeconds": 30,
}

SELECTOR = {"matchLabels": {"app": "a"}}

#: The labels a Job's pods get from it (its uid written as UID).
JOB_LABELS = {
    "batch.kubernetes.io/controller-uid": "UID",
    "batch.kubernetes.io/job-name": "job",
    "controller-uid": "UID",
    "job-name": "job",
}


def template(**spec: Any) -> Object:
    return {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [CONTAINER], **spec}}


def stored_template(**spec: Any) -> Object:
    return {
        "metadata": {"labels": {"app": "a"}},
        "spec": {"containers": [STORED_CONTAINER], **POD_SPEC_DEFAULTS, **spec},
    }


def meta(name: str, namespace: str | None = "default", **more: Any) -> Object:
    found: Object = {"name": name, **more}
    if namespace:
        found["namespace"] = namespace
    return found


#: (group, version, plural, namespace, what a client sends, what kube-apiserver 1.32 stores
#: without uid, creationTimestamp and resourceVersion).
CASES: list[tuple[str, str, str, str | None, Object, Object]] = [
    (
        "",
        "v1",
        "pods",
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {
                "containers": [
                    {
                        "name": "web",
                        "image": "registry.local:5000/web:1.2@sha256:" + "a" * 64,
                        "ports": [{"containerPort": 80, "name": "http"}],
                        "readinessProbe": {"httpGet": {"port": "http"}},
                        "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 5},
                        "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}},
                        "env": [
                            {
                                "name": "POD",
                                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                            }
                        ],
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/web"}],
                    }
                ],
                "initContainers": [{"name": "setup", "image": "busybox:latest"}],
                "volumes": [
                    {"name": "config", "configMap": {"name": "web"}},
                    {"name": "scratch"},
                    {"name": "data", "hostPath": {"path": "/data"}},
                    {"name": "creds", "secret": {"secretName": "web", "defaultMode": 256}},
                ],
                "restartPolicy": "OnFailure",
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta("web"),
            "spec": {
                "containers": [
                    {
                        "name": "web",
                        "image": "registry.local:5000/web:1.2@sha256:" + "a" * 64,
                        "imagePullPolicy": "IfNotPresent",
                        "ports": [{"containerPort": 80, "name": "http", "protocol": "TCP"}],
                        "readinessProbe": {
                            "httpGet": {"port": "http", "path": "/", "scheme": "HTTP"},
                            "timeoutSeconds": 1,
                            "periodSeconds": 10,
                            "successThreshold": 1,
                            "failureThreshold": 3,
                        },
                        "livenessProbe": {
                            "exec": {"command": ["true"]},
                            "timeoutSeconds": 1,
                            "periodSeconds": 5,
                            "successThreshold": 1,
                            "failureThreshold": 3,
                        },
                        "resources": {
                            "limits": {"cpu": "500m", "memory": "128Mi"},
                            "requests": {"cpu": "500m", "memory": "128Mi"},
                        },
                        "env": [
                            {
                                "name": "POD",
                                "valueFrom": {
                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}
                                },
                            }
                        ],
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                        "volumeMounts": [
                            {"name": "config", "mountPath": "/etc/web"},
                            {
                                "name": "kube-api-access-XXXXX",
                                "readOnly": True,
                                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                            },
                        ],
                    }
                ],
                "initContainers": [
                    {
                        "name": "setup",
                        "image": "busybox:latest",
                        "imagePullPolicy": "Always",
                        "resources": {},
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                        "volumeMounts": [
                            {
                                "name": "kube-api-access-XXXXX",
                                "readOnly": True,
                                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                            }
                        ],
                    }
                ],
                "volumes": [
                    {"name": "config", "configMap": {"name": "web", "defaultMode": 420}},
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "data", "hostPath": {"path": "/data", "type": ""}},
                    {"name": "creds", "secret": {"secretName": "web", "defaultMode": 256}},
                    {
                        "name": "kube-api-access-XXXXX",
                        "projected": {
                            "defaultMode": 420,
                            "sources": [
                                {
                                    "serviceAccountToken": {
                                        "expirationSeconds": 3607,
                                        "path": "token",
                                    }
                                },
                                {
                                    "configMap": {
                                        "name": "kube-root-ca.crt",
                                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                    }
                                },
                                {
                                    "downwardAPI": {
                                        "items": [
                                            {
                                                "fieldRef": {
                                                    "apiVersion": "v1",
                                                    "fieldPath": "metadata.namespace",
                                                },
                                                "path": "namespace",
                                            }
                                        ]
                                    }
                                },
                            ],
                        },
                    },
                ],
                **POD_SPEC_DEFAULTS,
                "restartPolicy": "OnFailure",
                "enableServiceLinks": True,
                "serviceAccount": "default",
                "serviceAccountName": "default",
                "priority": 0,
                "preemptionPolicy": "PreemptLowerPriority",
                "tolerations": [
                    {
                        "key": "node.kubernetes.io/not-ready",
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": 300,
                    },
                    {
                        "key": "node.kubernetes.io/unreachable",
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": 300,
                    },
                ],
            },
            "status": {"phase": "Pending", "qosClass": "Burstable"},
        },
    ),
    (
        "apps",
        "v1",
        "deployments",
        "default",
        {"metadata": {"name": "d"}, "spec": {"selector": SELECTOR, "template": template()}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta("d", generation=1),
            "spec": {
                "replicas": 1,
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600,
                "selector": SELECTOR,
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
                },
                "template": stored_template(),
            },
            "status": {},
        },
    ),
    (
        "apps",
        "v1",
        "replicasets",
        "default",
        {
            "metadata": {"name": "rs"},
            "spec": {"replicas": 0, "selector": SELECTOR, "template": template()},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": meta("rs", generation=1),
            "spec": {"replicas": 0, "selector": SELECTOR, "template": stored_template()},
            "status": {"replicas": 0},
        },
    ),
    (
        "apps",
        "v1",
        "daemonsets",
        "default",
        {"metadata": {"name": "ds"}, "spec": {"selector": SELECTOR, "template": template()}},
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": meta(
                "ds",
                generation=1,
                annotations={"deprecated.daemonset.template.generation": "1"},
            ),
            "spec": {
                "revisionHistoryLimit": 10,
                "selector": SELECTOR,
                "template": stored_template(),
                "updateStrategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
                },
            },
            "status": {
                "currentNumberScheduled": 0,
                "desiredNumberScheduled": 0,
                "numberMisscheduled": 0,
                "numberReady": 0,
            },
        },
    ),
    (
        "apps",
        "v1",
        "statefulsets",
        "default",
        {
            "metadata": {"name": "db"},
            "spec": {
                "serviceName": "db",
                "selector": SELECTOR,
                "template": template(),
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}},
                        },
                    }
                ],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": meta("db", generation=1),
            "spec": {
                "persistentVolumeClaimRetentionPolicy": {
                    "whenDeleted": "Retain",
                    "whenScaled": "Retain",
                },
                "podManagementPolicy": "OrderedReady",
                "replicas": 1,
                "revisionHistoryLimit": 10,
                "selector": SELECTOR,
                "serviceName": "db",
                "template": stored_template(),
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}},
                            "volumeMode": "Filesystem",
                        },
                        "status": {"phase": "Pending"},
                    }
                ],
            },
            "status": {"replicas": 0},
        },
    ),
    (
        "batch",
        "v1",
        "jobs",
        "default",
        {
            "metadata": {"name": "job"},
            "spec": {"template": template(restartPolicy="Never")},
        },
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": meta("job", generation=1, labels={**JOB_LABELS, "app": "a"}),
            "spec": {
                "backoffLimit": 6,
                "completionMode": "NonIndexed",
                "completions": 1,
                "parallelism": 1,
                "podReplacementPolicy": "TerminatingOrFailed",
                "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "UID"}},
                "suspend": False,
                "template": {
                    "metadata": {"labels": {**JOB_LABELS, "app": "a"}},
                    "spec": stored_template(restartPolicy="Never")["spec"],
                },
            },
            "status": {},
        },
    ),
    (
        "batch",
        "v1",
        "cronjobs",
        "default",
        {
            "metadata": {"name": "cj"},
            "spec": {
                "schedule": "*/5 * * * *",
                "jobTemplate": {"spec": {"template": template(restartPolicy="Never")}},
            },
        },
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": meta("cj", generation=1),
            "spec": {
                "concurrencyPolicy": "Allow",
                "failedJobsHistoryLimit": 1,
                "successfulJobsHistoryLimit": 3,
                "suspend": False,
                "schedule": "*/5 * * * *",
                "jobTemplate": {"spec": {"template": stored_template(restartPolicy="Never")}},
            },
            "status": {},
        },
    ),
    (
        "",
        "v1",
        "services",
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {
                "clusterIP": "10.43.0.50",
                "selector": {"app": "a"},
                "ports": [
                    {"name": "http", "port": 80},
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta("web"),
            "spec": {
                "clusterIP": "10.43.0.50",
                "clusterIPs": ["10.43.0.50"],
                "internalTrafficPolicy": "Cluster",
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "ports": [
                    {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80},
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                ],
                "selector": {"app": "a"},
                "sessionAffinity": "None",
                "type": "ClusterIP",
            },
            "status": {"loadBalancer": {}},
        },
    ),
    (
        "",
        "v1",
        "namespaces",
        None,
        {"metadata": {"name": "team", "labels": {"kubernetes.io/metadata.name": "other"}}},
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": meta("team", None, labels={"kubernetes.io/metadata.name": "team"}),
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        },
    ),
    (
        "",
        "v1",
        "secrets",
        "default",
        {"metadata": {"name": "s"}, "stringData": {"k": "v"}},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta("s"),
            "data": {"k": "dg=="},
            "type": "Opaque",
        },
    ),
    (
        "",
        "v1",
        "replicationcontrollers",
        "default",
        {"metadata": {"name": "rc"}, "spec": {"template": template()}},
        {
            "apiVersion": "v1",
            "kind": "ReplicationController",
            "metadata": meta("rc", generation=1, labels={"app": "a"}),
            "spec": {"replicas": 1, "selector": {"app": "a"}, "template": stored_template()},
            "status": {"replicas": 0},
        },
    ),
    (
        "",
        "v1",
        "podtemplates",
        "default",
        {"metadata": {"name": "pt"}, "template": template()},
        {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": meta("pt"),
            "template": stored_template(),
        },
    ),
    (
        "",
        "v1",
        "persistentvolumes",
        None,
        {
            "metadata": {"name": "pv"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": "/srv"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": meta("pv", None),
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "capacity": {"storage": "1Gi"},
                "hostPath": {"path": "/srv", "type": ""},
                "persistentVolumeReclaimPolicy": "Retain",
                "volumeMode": "Filesystem",
            },
            "status": {"phase": "Pending"},
        },
    ),
    (
        "",
        "v1",
        "persistentvolumeclaims",
        "default",
        {
            "metadata": {"name": "pvc"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": meta("pvc"),
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
                "volumeMode": "Filesystem",
            },
            "status": {"phase": "Pending"},
        },
    ),
    (
        "",
        "v1",
        "limitranges",
        "default",
        {
            "metadata": {"name": "lr"},
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "max": {"cpu": "2", "memory": "1Gi"},
                        "min": {"cpu": "100m"},
                    },
                    {"type": "Pod", "max": {"cpu": "4"}},
                ]
            },
        },
        {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": meta("lr"),
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "max": {"cpu": "2", "memory": "1Gi"},
                        "min": {"cpu": "100m"},
                        "default": {"cpu": "2", "memory": "1Gi"},
                        "defaultRequest": {"cpu": "2", "memory": "1Gi"},
                    },
                    {"type": "Pod", "max": {"cpu": "4"}},
                ]
            },
        },
    ),
    (
        "",
        "v1",
        "endpoints",
        "default",
        {
            "metadata": {"name": "ep"},
            "subsets": [{"addresses": [{"ip": "10.42.0.5"}], "ports": [{"port": 80}]}],
        },
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": meta("ep"),
            "subsets": [
                {"addresses": [{"ip": "10.42.0.5"}], "ports": [{"port": 80, "protocol": "TCP"}]}
            ],
        },
    ),
    (
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "default",
        {
            "metadata": {"name": "es"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.5"]}],
            "ports": [{"port": 80}],
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": meta("es"),
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.5"]}],
            "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
        },
    ),
    (
        "storage.k8s.io",
        "v1",
        "storageclasses",
        None,
        {"metadata": {"name": "local"}, "provisioner": "rancher.io/local-path"},
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": meta("local", None),
            "provisioner": "rancher.io/local-path",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        },
    ),
    (
        "storage.k8s.io",
        "v1",
        "csidrivers",
        None,
        {"metadata": {"name": "csi.example.com"}, "spec": {"attachRequired": False}},
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSIDriver",
            "metadata": meta("csi.example.com", None),
            "spec": {
                "attachRequired": False,
                "fsGroupPolicy": "ReadWriteOnceWithFSType",
                "podInfoOnMount": False,
                "requiresRepublish": False,
                "seLinuxMount": False,
                "storageCapacity": False,
                "volumeLifecycleModes": ["Persistent"],
            },
        },
    ),
    (
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "default",
        {
            "metadata": {"name": "hpa"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
                "maxReplicas": 5,
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 60}},
            },
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": meta("hpa"),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
                "minReplicas": 1,
                "maxReplicas": 5,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 80},
                        },
                    }
                ],
                "behavior": {
                    "scaleUp": {
                        "stabilizationWindowSeconds": 0,
                        "selectPolicy": "Max",
                        "policies": [
                            {"type": "Pods", "value": 4, "periodSeconds": 15},
                            {"type": "Percent", "value": 100, "periodSeconds": 15},
                        ],
                    },
                    "scaleDown": {
                        "stabilizationWindowSeconds": 60,
                        "selectPolicy": "Max",
                        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}],
                    },
                },
            },
            "status": {"desiredReplicas": 0},
        },
    ),
    (
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "default",
        {
            "metadata": {"name": "np"},
            "spec": {
                "podSelector": {},
                "ingress": [{"ports": [{"port": 80}]}],
                "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}],
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta("np", generation=1),
            "spec": {
                "podSelector": {},
                "ingress": [{"ports": [{"port": 80, "protocol": "TCP"}]}],
                "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}],
                "policyTypes": ["Ingress", "Egress"],
            },
        },
    ),
    (
        "networking.k8s.io",
        "v1",
        "ingresses",
        "default",
        {
            "metadata": {"name": "ing"},
            "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": meta("ing", generation=1),
            "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
            "status": {"loadBalancer": {}},
        },
    ),
    (
        "networking.k8s.io",
        "v1",
        "ingressclasses",
        None,
        {
            "metadata": {"name": "nginx"},
            "spec": {
                "controller": "k8s.io/ingress-nginx",
                "parameters": {"apiGroup": "k8s.example.com", "kind": "Params", "name": "p"},
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": meta("nginx", None, generation=1),
            "spec": {
                "controller": "k8s.io/ingress-nginx",
                "parameters": {
                    "apiGroup": "k8s.example.com",
                    "kind": "Params",
                    "name": "p",
                    "scope": "Cluster",
                },
            },
        },
    ),
    (
        "policy",
        "v1",
        "poddisruptionbudgets",
        "default",
        {"metadata": {"name": "pdb"}, "spec": {"minAvailable": 1, "selector": SELECTOR}},
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": meta("pdb", generation=1),
            "spec": {"minAvailable": 1, "selector": SELECTOR},
            "status": {
                "currentHealthy": 0,
                "desiredHealthy": 0,
                "disruptionsAllowed": 0,
                "expectedPods": 0,
            },
        },
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "default",
        {
            "metadata": {"name": "rb"},
            "roleRef": {"kind": "Role", "name": "reader"},
            "subjects": [
                {"kind": "User", "name": "jane"},
                {"kind": "ServiceAccount", "name": "default", "namespace": "default"},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta("rb"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "jane"},
                {"kind": "ServiceAccount", "name": "default", "namespace": "default"},
            ],
        },
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        None,
        {
            "metadata": {"name": "crb"},
            "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "Group", "name": "devs"}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": meta("crb", None),
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "view",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "devs"}
            ],
        },
    ),
    (
        "scheduling.k8s.io",
        "v1",
        "priorityclasses",
        None,
        {"metadata": {"name": "high"}, "value": 1000},
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": meta("high", None),
            "value": 1000,
            "preemptionPolicy": "PreemptLowerPriority",
        },
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        None,
        {
            "metadata": {"name": "hook"},
            "webhooks": [
                {
                    "name": "hook.example.com",
                    "clientConfig": {"service": {"name": "hook", "namespace": "default"}},
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                        }
                    ],
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                }
            ],
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": meta("hook", None, generation=1),
            "webhooks": [
                {
                    "name": "hook.example.com",
                    "clientConfig": {
                        "service": {"name": "hook", "namespace": "default", "port": 443}
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                            "scope": "*",
                        }
                    ],
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                    "failurePolicy": "Fail",
                    "matchPolicy": "Equivalent",
                    "namespaceSelector": {},
                    "objectSelector": {},
                    "reinvocationPolicy": "Never",
                    "timeoutSeconds": 10,
                }
            ],
        },
    ),
]


def _comparable(obj: Object) -> Object:
    """C{obj} without what differs between any two servers (uid, times, versions, random names)."""
    found = copy.deepcopy(obj)
    uid = found["metadata"].pop("uid")
    for key in ("creationTimestamp", "resourceVersion"):
        found["metadata"].pop(key, None)
    text = re.sub(
        r"kube-api-access-[bcdfghjklmnpqrstvwxz2456789]{5}",
        "kube-api-access-XXXXX",
        json.dumps(found).replace(uid, "UID"),
    )
    result: Object = json.loads(text)
    return result


class StoredDefaultsTests(SynchronousTestCase):
    maxDiff = None

    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.server.store.allocators[("", "services")] = ServiceAllocator(
            self.server.datastore, self.server.clock, "10.43.0.0/16"
        )

    def test_each_kind_is_stored_as_kube_apiserver_stores_it(self) -> None:
        kinds = set()
        for group, version, plural, namespace, given, expected in CASES:
            resource = self.server.resource(group, plural, version)
            stored = self.server.run(self.server.store.create(resource, namespace, given))
            self.assertEqual(_comparable(stored), expected, f"{plural}.{group}")
            kinds.add((group, resource.kind))
        self.assertGreaterEqual(len(kinds), 20)

    def test_what_a_user_set_is_kept_and_defaults_come_back_on_every_write(self) -> None:
        """An update or patch that drops a defaulted field gets it back, as kube decodes it."""
        deployments = self.server.resource("apps", "deployments")
        given = {
            "metadata": {"name": "d"},
            "spec": {
                "selector": SELECTOR,
                "template": template(dnsPolicy="Default"),
                "strategy": {"type": "Recreate"},
            },
        }
        stored = self.server.run(self.server.store.create(deployments, "default", given))
        self.assertEqual(stored["spec"]["strategy"], {"type": "Recreate"})
        self.assertEqual(stored["spec"]["template"]["spec"]["dnsPolicy"], "Default")

        def drop(current: Object) -> Object:
            del current["spec"]["strategy"], current["spec"]["revisionHistoryLimit"]
            del current["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"]
            return current

        updated = self.server.run(
            self.server.store.guaranteed_update(deployments, "default", "d", drop)
        )
        self.assertEqual(
            updated["spec"]["strategy"],
            {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
            },
        )
        self.assertEqual(updated["spec"]["revisionHistoryLimit"], 10)
        self.assertEqual(
            updated["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "Always"
        )
        # The strategy the user dropped is the default one now: a change of spec.
        self.assertEqual(updated["metadata"]["generation"], 2)

    def test_a_pod_gets_its_admission_once_and_keeps_what_it_chose(self) -> None:
        """Admission runs on create only; a pod that opts out or names its own gets no more."""
        pods = self.server.resource("", "pods")
        pod = {
            "metadata": {"name": "p"},
            "spec": {
                "containers": [CONTAINER],
                "serviceAccountName": "builder",
                "automountServiceAccountToken": False,
                "priorityClassName": "system-node-critical",
                "tolerations": [{"operator": "Exists"}],
            },
        }
        stored = self.server.run(self.server.store.create(pods, "default", pod))
        spec = stored["spec"]
        self.assertEqual(
            (spec["serviceAccountName"], spec["serviceAccount"]), ("builder", "builder")
        )
        self.assertNotIn("volumes", spec)
        self.assertEqual(spec["tolerations"], [{"operator": "Exists"}])
        self.assertEqual(
            (spec["priority"], spec["preemptionPolicy"]), (2000001000, "PreemptLowerPriority")
        )
        self.assertEqual(stored["status"]["qosClass"], "BestEffort")

        other = self.server.run(
            self.server.store.create(
                pods, "default", {"metadata": {"name": "q"}, "spec": {"containers": [CONTAINER]}}
            )
        )

        def label(current: Object) -> Object:
            current["metadata"]["labels"] = {"seen": "yes"}
            return current

        updated = self.server.run(self.server.store.guaranteed_update(pods, "default", "q", label))
        self.assertEqual(updated["spec"]["volumes"], other["spec"]["volumes"])
        self.assertEqual(len(updated["spec"]["volumes"]), 1)


class KubectlDefaultsTests(SynchronousTestCase):
    """The same objects through the real kubectl and a real server read back the same."""

    maxDiff = None

    def test_kubectl_create_then_get_shows_kube_apiservers_defaults(self) -> None:
        server = KubectlServer.start(self, "127.0.0.12")
        wanted = {
            (plural, group): (given, expected)
            for group, version, plural, _, given, expected in CASES
            if plural in ("pods", "deployments", "jobs", "services", "persistentvolumeclaims")
        }
        for (plural, group), (given, expected) in wanted.items():
            document = {"apiVersion": expected["apiVersion"], "kind": expected["kind"], **given}
            server.kubectl("create", "-f", "-", stdin=yaml.safe_dump(document))
            name = given["metadata"]["name"]
            shown = json.loads(
                server.kubectl("get", f"{plural}.{group}".rstrip("."), name, "-o", "json")
            )
            if plural == "pods":
                # What the scheduler wrote on the server's own node, not a default.
                shown["spec"].pop("nodeName", None)
            # Controllers write status as soon as the object exists: the defaults are the rest.
            shown.pop("status", None)
            expected = {key: value for key, value in expected.items() if key != "status"}
            if plural == "persistentvolumeclaims":
                # The DefaultStorageClass admission's, not a default: k3s's local-path class.
                self.assertEqual(shown["spec"].pop("storageClassName"), "local-path")
            if plural == "deployments":
                # The deployment controller may have written since: its revision.
                annotations = shown["metadata"].pop("annotations", {})
                self.assertLessEqual(set(annotations), {"deployment.kubernetes.io/revision"})
            self.assertEqual(_comparable(shown), expected, plural)
