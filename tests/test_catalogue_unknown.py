"""
The fields an object names that its kind's 1.32 schema does not declare, as kube-apiserver's
strict decoding (``fieldValidation``) names them.
"""

from __future__ import annotations

import gzip
import json
import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver import catalogue
from k3stw.apiserver.catalogue.unknown import (
    MAX_DEPTH,
    ListOf,
    MapOf,
    check,
    kind_node,
    schema_nodes,
    unknown_fields,
)

#: Pod spec fields shared by the workload manifests below (as YAML, indented for a template).
POD_SPEC = """\
      serviceAccountName: web
      automountServiceAccountToken: false
      priorityClassName: high
      terminationGracePeriodSeconds: 45
      dnsPolicy: ClusterFirst
      dnsConfig:
        nameservers: [1.1.1.1]
        searches: [svc.cluster.local]
        options:
          - name: ndots
            value: "2"
      hostAliases:
        - ip: 10.0.0.10
          hostnames: [db.local]
      nodeSelector:
        kubernetes.io/os: linux
        node.kubernetes.io/instance-type: m5.large
      securityContext:
        runAsNonRoot: true
        runAsUser: 1000
        runAsGroup: 3000
        fsGroup: 2000
        fsGroupChangePolicy: OnRootMismatch
        supplementalGroups: [4000]
        seccompProfile:
          type: RuntimeDefault
        sysctls:
          - name: net.ipv4.ip_local_port_range
            value: "1024 65000"
      imagePullSecrets:
        - name: registry
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
              - matchExpressions:
                  - key: topology.kubernetes.io/zone
                    operator: In
                    values: [eu-west-1a, eu-west-1b]
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 50
              preference:
                matchExpressions:
                  - key: disktype
                    operator: In
                    values: [ssd]
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              podAffinityTerm:
                topologyKey: kubernetes.io/hostname
                labelSelector:
                  matchLabels:
                    app: web
                namespaceSelector: {}
        podAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - topologyKey: topology.kubernetes.io/zone
              labelSelector:
                matchExpressions:
                  - key: app
                    operator: In
                    values: [cache]
              matchLabelKeys: [pod-template-hash]
      tolerations:
        - key: node-role.kubernetes.io/control-plane
          operator: Exists
          effect: NoSchedule
        - key: node.kubernetes.io/not-ready
          operator: Exists
          effect: NoExecute
          tolerationSeconds: 300
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: topology.kubernetes.io/zone
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              app: web
          matchLabelKeys: [pod-template-hash]
          minDomains: 2
          nodeAffinityPolicy: Honor
          nodeTaintsPolicy: Ignore
      initContainers:
        - name: migrate
          image: registry.example.com/web:1.4.2
          command: [/bin/sh, -c]
          args: [./migrate --up]
          envFrom:
            - configMapRef:
                name: web-config
            - secretRef:
                name: web-secrets
                optional: true
              prefix: DB_
          resources:
            requests: {cpu: 50m, memory: 32Mi}
        - name: proxy
          image: envoyproxy/envoy:v1.31.0
          restartPolicy: Always
          ports:
            - containerPort: 15001
      containers:
        - name: web
          image: registry.example.com/web:1.4.2
          imagePullPolicy: IfNotPresent
          workingDir: /srv
          ports:
            - name: http
              containerPort: 8080
              protocol: TCP
            - name: metrics
              containerPort: 9090
          env:
            - name: LOG_LEVEL
              value: info
            - name: DB_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: db
                  key: password
            - name: FEATURE_FLAGS
              valueFrom:
                configMapKeyRef:
                  name: flags
                  key: flags
                  optional: true
            - name: POD_IP
              valueFrom:
                fieldRef:
                  apiVersion: v1
                  fieldPath: status.podIP
            - name: MEMORY_LIMIT
              valueFrom:
                resourceFieldRef:
                  containerName: web
                  resource: limits.memory
                  divisor: 1Mi
          resources:
            requests:
              cpu: 250m
              memory: 64Mi
              ephemeral-storage: 1Gi
            limits:
              cpu: 1
              memory: 512Mi
              nvidia.com/gpu: 1
          resizePolicy:
            - resourceName: cpu
              restartPolicy: NotRequired
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
              scheme: HTTP
              httpHeaders:
                - name: X-Probe
                  value: liveness
            initialDelaySeconds: 10
            periodSeconds: 10
            timeoutSeconds: 2
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /ready
              port: 8080
            successThreshold: 1
          startupProbe:
            tcpSocket:
              port: 8080
            failureThreshold: 30
            terminationGracePeriodSeconds: 60
          lifecycle:
            postStart:
              httpGet:
                path: /warm
                port: 8080
            preStop:
              exec:
                command: [/bin/sh, -c, sleep 5]
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            privileged: false
            capabilities:
              drop: [ALL]
              add: [NET_BIND_SERVICE]
            seLinuxOptions:
              level: "s0:c123,c456"
            appArmorProfile:
              type: RuntimeDefault
          volumeMounts:
            - name: config
              mountPath: /etc/web
              readOnly: true
            - name: data
              mountPath: /var/lib/web
              subPath: web
              mountPropagation: None
            - name: tmp
              mountPath: /tmp
          terminationMessagePolicy: FallbackToLogsOnError
        - name: sidecar
          image: busybox:1.36
          command: [sh, -c, tail -f /dev/null]
          stdin: true
          tty: true
          livenessProbe:
            exec:
              command: [cat, /tmp/healthy]
          readinessProbe:
            grpc:
              port: 9000
              service: health
          lifecycle:
            preStop:
              sleep:
                seconds: 5
      volumes:
        - name: config
          configMap:
            name: web-config
            defaultMode: 420
            items:
              - key: app.properties
                path: app.properties
                mode: 256
            optional: false
        - name: secrets
          secret:
            secretName: web-tls
            items:
              - key: tls.crt
                path: tls.crt
        - name: tmp
          emptyDir:
            medium: Memory
            sizeLimit: 64Mi
        - name: host
          hostPath:
            path: /var/log
            type: Directory
        - name: data
          persistentVolumeClaim:
            claimName: web-data
            readOnly: false
        - name: token
          projected:
            defaultMode: 420
            sources:
              - serviceAccountToken:
                  audience: vault
                  expirationSeconds: 3600
                  path: token
              - configMap:
                  name: kube-root-ca.crt
                  items:
                    - key: ca.crt
                      path: ca.crt
              - downwardAPI:
                  items:
                    - path: namespace
                      fieldRef:
                        fieldPath: metadata.namespace
              - secret:
                  name: extra
                  optional: true
        - name: podinfo
          downwardAPI:
            items:
              - path: labels
                fieldRef:
                  fieldPath: metadata.labels
              - path: cpu_limit
                resourceFieldRef:
                  containerName: web
                  resource: limits.cpu
                  divisor: 1m
        - name: shared
          nfs:
            server: nfs.example.com
            path: /exports/web
            readOnly: true
        - name: inline-csi
          csi:
            driver: secrets-store.csi.k8s.io
            readOnly: true
            volumeAttributes:
              secretProviderClass: vault-web
            nodePublishSecretRef:
              name: csi-creds
        - name: scratch
          ephemeral:
            volumeClaimTemplate:
              metadata:
                labels:
                  type: scratch
              spec:
                accessModes: [ReadWriteOnce]
                storageClassName: fast
                resources:
                  requests:
                    storage: 1Gi
        - name: model
          image:
            reference: registry.example.com/models/llm:v1
            pullPolicy: IfNotPresent
"""

#: Realistic manifests of the kinds users send most, each one valid for 1.32.
MANIFESTS = (
    """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels:
    app.kubernetes.io/name: web
    app.kubernetes.io/part-of: shop
  annotations:
    deployment.kubernetes.io/revision: "3"
    kubectl.kubernetes.io/last-applied-configuration: '{"apiVersion":"apps/v1"}'
  finalizers: [example.com/protect]
  ownerReferences:
    - apiVersion: example.com/v1
      kind: Shop
      name: main
      uid: 6b3f2c1e-1111-2222-3333-444455556666
      controller: true
      blockOwnerDeletion: true
spec:
  replicas: 3
  revisionHistoryLimit: 5
  progressDeadlineSeconds: 600
  minReadySeconds: 5
  paused: false
  selector:
    matchLabels:
      app: web
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 0
  template:
    metadata:
      labels:
        app: web
      annotations:
        prometheus.io/scrape: "true"
    spec:
"""
    + POD_SPEC
    + """\
status:
  observedGeneration: 4
  replicas: 3
  updatedReplicas: 3
  readyReplicas: 3
  availableReplicas: 3
  conditions:
    - type: Available
      status: "True"
      lastUpdateTime: "2024-05-01T10:00:00Z"
      lastTransitionTime: "2024-05-01T10:00:00Z"
      reason: MinimumReplicasAvailable
      message: Deployment has minimum availability.
""",
    """\
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
  namespace: shop
spec:
  serviceName: db
  replicas: 3
  podManagementPolicy: Parallel
  minReadySeconds: 10
  ordinals:
    start: 1
  persistentVolumeClaimRetentionPolicy:
    whenDeleted: Retain
    whenScaled: Delete
  updateStrategy:
    type: RollingUpdate
    rollingUpdate:
      partition: 0
      maxUnavailable: 1
  selector:
    matchLabels:
      app: db
  template:
    metadata:
      labels:
        app: db
    spec:
      containers:
        - name: postgres
          image: postgres:16
          ports:
            - name: pg
              containerPort: 5432
          volumeMounts:
            - name: pgdata
              mountPath: /var/lib/postgresql/data
  volumeClaimTemplates:
    - apiVersion: v1
      kind: PersistentVolumeClaim
      metadata:
        name: pgdata
        labels:
          app: db
      spec:
        accessModes: [ReadWriteOnce]
        storageClassName: fast
        resources:
          requests:
            storage: 20Gi
""",
    """\
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: node-exporter
  namespace: monitoring
spec:
  revisionHistoryLimit: 10
  selector:
    matchLabels:
      app: node-exporter
  updateStrategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 10%
      maxSurge: 0
  template:
    metadata:
      labels:
        app: node-exporter
    spec:
      hostNetwork: true
      hostPID: true
      hostIPC: false
      tolerations:
        - operator: Exists
      containers:
        - name: node-exporter
          image: quay.io/prometheus/node-exporter:v1.8.2
          args: [--path.rootfs=/host]
          ports:
            - containerPort: 9100
              hostPort: 9100
              name: metrics
          volumeMounts:
            - name: root
              mountPath: /host
              readOnly: true
              mountPropagation: HostToContainer
      volumes:
        - name: root
          hostPath:
            path: /
status:
  currentNumberScheduled: 3
  desiredNumberScheduled: 3
  numberMisscheduled: 0
  numberReady: 3
  numberAvailable: 3
  updatedNumberScheduled: 3
  observedGeneration: 1
""",
    """\
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web-5d4f8c7b9
  namespace: shop
  labels:
    pod-template-hash: 5d4f8c7b9
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
      pod-template-hash: 5d4f8c7b9
  template:
    metadata:
      labels:
        app: web
        pod-template-hash: 5d4f8c7b9
    spec:
"""
    + POD_SPEC,
    """\
apiVersion: batch/v1
kind: Job
metadata:
  name: reindex
  namespace: shop
spec:
  completions: 5
  parallelism: 2
  completionMode: Indexed
  backoffLimitPerIndex: 1
  maxFailedIndexes: 2
  activeDeadlineSeconds: 3600
  ttlSecondsAfterFinished: 600
  suspend: false
  podReplacementPolicy: Failed
  podFailurePolicy:
    rules:
      - action: FailJob
        onExitCodes:
          containerName: reindex
          operator: In
          values: [42]
      - action: Ignore
        onPodConditions:
          - type: DisruptionTarget
            status: "True"
  successPolicy:
    rules:
      - succeededIndexes: 0-2
        succeededCount: 2
  template:
    metadata:
      labels:
        job: reindex
    spec:
      restartPolicy: Never
      containers:
        - name: reindex
          image: registry.example.com/reindex:2
          resources:
            limits:
              cpu: "2"
              memory: 1Gi
""",
    """\
apiVersion: batch/v1
kind: CronJob
metadata:
  name: backup
  namespace: shop
spec:
  schedule: "*/30 * * * *"
  timeZone: Europe/Paris
  concurrencyPolicy: Forbid
  startingDeadlineSeconds: 120
  successfulJobsHistoryLimit: 3
  failedJobsHistoryLimit: 1
  suspend: false
  jobTemplate:
    metadata:
      labels:
        job: backup
    spec:
      backoffLimit: 2
      template:
        spec:
          restartPolicy: OnFailure
          containers:
            - name: backup
              image: registry.example.com/backup:1
              env:
                - name: TARGET
                  value: s3://backups
status:
  lastScheduleTime: "2024-05-01T10:00:00Z"
  lastSuccessfulTime: "2024-05-01T10:01:00Z"
  active:
    - kind: Job
      name: backup-28577160
      namespace: shop
      apiVersion: batch/v1
""",
    """\
apiVersion: v1
kind: Pod
metadata:
  name: web-5d4f8c7b9-x2x7q
  generateName: web-5d4f8c7b9-
  namespace: shop
  uid: 0c8f3a2e-1234-4cde-9f00-aabbccddeeff
  resourceVersion: "12345"
  generation: 1
  creationTimestamp: "2024-05-01T10:00:00Z"
  labels:
    app: web
  managedFields:
    - manager: kube-controller-manager
      operation: Update
      apiVersion: v1
      time: "2024-05-01T10:00:00Z"
      fieldsType: FieldsV1
      fieldsV1:
        f:metadata:
          f:labels:
            .: {}
            f:app: {}
spec:
  nodeName: node-1
  hostname: web-0
  subdomain: web
  setHostnameAsFQDN: false
  enableServiceLinks: false
  shareProcessNamespace: true
  restartPolicy: Always
  schedulerName: default-scheduler
  preemptionPolicy: PreemptLowerPriority
  priority: 1000000
  runtimeClassName: gvisor
  hostUsers: false
  os:
    name: linux
  readinessGates:
    - conditionType: example.com/ready
  schedulingGates:
    - name: example.com/quota
  overhead:
    cpu: 250m
  ephemeralContainers:
    - name: debugger
      image: busybox:1.36
      targetContainerName: web
      stdin: true
"""
    + textwrap.indent(textwrap.dedent(POD_SPEC), "  ")
    + """\
status:
  phase: Running
  qosClass: Burstable
  hostIP: 10.0.0.5
  hostIPs:
    - ip: 10.0.0.5
  podIP: 10.42.0.17
  podIPs:
    - ip: 10.42.0.17
    - ip: fd00::17
  startTime: "2024-05-01T10:00:00Z"
  conditions:
    - type: Ready
      status: "True"
      lastProbeTime: null
      lastTransitionTime: "2024-05-01T10:00:05Z"
  initContainerStatuses:
    - name: migrate
      ready: true
      restartCount: 0
      image: registry.example.com/web:1.4.2
      imageID: registry.example.com/web@sha256:abcd
      containerID: containerd://1234
      state:
        terminated:
          exitCode: 0
          reason: Completed
          startedAt: "2024-05-01T10:00:01Z"
          finishedAt: "2024-05-01T10:00:02Z"
  containerStatuses:
    - name: web
      ready: true
      started: true
      restartCount: 1
      image: registry.example.com/web:1.4.2
      imageID: registry.example.com/web@sha256:abcd
      containerID: containerd://5678
      state:
        running:
          startedAt: "2024-05-01T10:00:03Z"
      lastState:
        terminated:
          exitCode: 137
          reason: OOMKilled
          startedAt: "2024-05-01T09:00:00Z"
          finishedAt: "2024-05-01T10:00:00Z"
      allocatedResources:
        cpu: 250m
      resources:
        requests:
          cpu: 250m
      volumeMounts:
        - name: config
          mountPath: /etc/web
          readOnly: true
""",
    """\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations:
    service.beta.kubernetes.io/aws-load-balancer-type: nlb
spec:
  type: LoadBalancer
  selector:
    app: web
  ports:
    - name: http
      port: 80
      targetPort: http
      protocol: TCP
      appProtocol: http
      nodePort: 30080
    - name: metrics
      port: 9090
      targetPort: 9090
  clusterIP: 10.43.12.7
  clusterIPs: [10.43.12.7]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  sessionAffinity: ClientIP
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: 10800
  externalTrafficPolicy: Local
  internalTrafficPolicy: Cluster
  healthCheckNodePort: 31000
  loadBalancerSourceRanges: [10.0.0.0/8]
  allocateLoadBalancerNodePorts: true
  publishNotReadyAddresses: false
  trafficDistribution: PreferClose
status:
  loadBalancer:
    ingress:
      - ip: 203.0.113.10
        ipMode: VIP
        ports:
          - port: 80
            protocol: TCP
""",
    """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: shop
  annotations:
    cert-manager.io/cluster-issuer: letsencrypt
spec:
  ingressClassName: traefik
  tls:
    - hosts: [shop.example.com]
      secretName: shop-tls
  defaultBackend:
    resource:
      apiGroup: example.com
      kind: StorageBucket
      name: static
  rules:
    - host: shop.example.com
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service:
                name: web
                port:
                  name: http
          - path: /api
            pathType: ImplementationSpecific
            backend:
              service:
                name: api
                port:
                  number: 8080
status:
  loadBalancer:
    ingress:
      - ip: 203.0.113.10
        ports:
          - port: 443
            protocol: TCP
""",
    """\
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: traefik
  annotations:
    ingressclass.kubernetes.io/is-default-class: "true"
spec:
  controller: traefik.io/ingress-controller
  parameters:
    apiGroup: k8s.example.com
    kind: IngressParameters
    name: external-lb
    scope: Namespace
    namespace: traefik
""",
    """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: web
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - podSelector:
            matchLabels:
              app: frontend
        - namespaceSelector:
            matchExpressions:
              - key: kubernetes.io/metadata.name
                operator: In
                values: [ingress]
        - ipBlock:
            cidr: 172.17.0.0/16
            except: [172.17.1.0/24]
      ports:
        - protocol: TCP
          port: http
        - protocol: TCP
          port: 32000
          endPort: 32768
  egress:
    - to:
        - ipBlock:
            cidr: 10.0.0.0/8
      ports:
        - port: 5432
""",
    """\
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: web
  namespace: shop
rules:
  - apiGroups: [""]
    resources: [configmaps, secrets]
    resourceNames: [web-config]
    verbs: [get, list, watch]
  - apiGroups: [apps]
    resources: [deployments/scale]
    verbs: [patch]
""",
    """\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: monitoring
  labels:
    rbac.example.com/aggregate-to-monitoring: "true"
aggregationRule:
  clusterRoleSelectors:
    - matchLabels:
        rbac.example.com/aggregate-to-monitoring: "true"
rules:
  - apiGroups: [""]
    resources: [nodes, nodes/metrics, services, endpoints, pods]
    verbs: [get, list, watch]
  - nonResourceURLs: [/metrics, /metrics/cadvisor]
    verbs: [get]
""",
    """\
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: web
  namespace: shop
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: web
subjects:
  - kind: ServiceAccount
    name: web
    namespace: shop
  - kind: Group
    name: developers
    apiGroup: rbac.authorization.k8s.io
""",
    """\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: monitoring
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: monitoring
subjects:
  - kind: User
    name: jane@example.com
    apiGroup: rbac.authorization.k8s.io
""",
    """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
  namespace: shop
immutable: false
data:
  app.properties: |
    color=blue
    size=large
  LOG_LEVEL: debug
  spec: not a field, a key
  containerz: also a key
binaryData:
  logo.png: iVBORw0KGgo=
""",
    """\
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: shop
type: Opaque
immutable: true
data:
  password: c2VjcmV0
stringData:
  username: admin
  config.yaml: |
    url: postgres://db:5432
""",
    """\
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: web-data
  namespace: shop
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Filesystem
  storageClassName: fast
  volumeName: pv-0001
  resources:
    requests:
      storage: 10Gi
    limits:
      storage: 20Gi
  selector:
    matchLabels:
      tier: gold
  dataSource:
    apiGroup: snapshot.storage.k8s.io
    kind: VolumeSnapshot
    name: web-snap
  dataSourceRef:
    apiGroup: snapshot.storage.k8s.io
    kind: VolumeSnapshot
    name: web-snap
    namespace: shop
status:
  phase: Bound
  accessModes: [ReadWriteOnce]
  capacity:
    storage: 10Gi
  conditions:
    - type: Resizing
      status: "True"
      lastProbeTime: null
      lastTransitionTime: "2024-05-01T10:00:00Z"
""",
    """\
apiVersion: v1
kind: PersistentVolume
metadata:
  name: pv-0001
  labels:
    tier: gold
spec:
  capacity:
    storage: 10Gi
  accessModes: [ReadWriteOnce, ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: fast
  volumeMode: Filesystem
  mountOptions: [hard, nfsvers=4.1]
  claimRef:
    apiVersion: v1
    kind: PersistentVolumeClaim
    namespace: shop
    name: web-data
    uid: 11111111-2222-3333-4444-555555555555
  csi:
    driver: ebs.csi.aws.com
    volumeHandle: vol-0123456789abcdef0
    fsType: ext4
    volumeAttributes:
      storage.kubernetes.io/csiProvisionerIdentity: 1700000000-ebs
    nodeStageSecretRef:
      name: ebs
      namespace: kube-system
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions:
            - key: topology.ebs.csi.aws.com/zone
              operator: In
              values: [eu-west-1a]
status:
  phase: Bound
  lastPhaseTransitionTime: "2024-05-01T10:00:00Z"
""",
    """\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: fast
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: ebs.csi.aws.com
parameters:
  type: gp3
  iops: "3000"
  csi.storage.k8s.io/fstype: ext4
  encrypted: "true"
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
mountOptions: [discard]
allowedTopologies:
  - matchLabelExpressions:
      - key: topology.ebs.csi.aws.com/zone
        values: [eu-west-1a, eu-west-1b]
""",
    """\
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: web
  namespace: shop
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: web
  minReplicas: 2
  maxReplicas: 20
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: 70
    - type: Pods
      pods:
        metric:
          name: packets-per-second
          selector:
            matchLabels:
              verb: GET
        target:
          type: AverageValue
          averageValue: 1k
    - type: Object
      object:
        describedObject:
          apiVersion: networking.k8s.io/v1
          kind: Ingress
          name: web
        metric:
          name: requests-per-second
        target:
          type: Value
          value: 10k
    - type: External
      external:
        metric:
          name: queue_messages_ready
        target:
          type: AverageValue
          averageValue: "30"
    - type: ContainerResource
      containerResource:
        name: memory
        container: web
        target:
          type: AverageValue
          averageValue: 400Mi
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 300
      selectPolicy: Min
      policies:
        - type: Percent
          value: 10
          periodSeconds: 60
    scaleUp:
      policies:
        - type: Pods
          value: 4
          periodSeconds: 15
status:
  observedGeneration: 2
  currentReplicas: 3
  desiredReplicas: 4
  lastScaleTime: "2024-05-01T10:00:00Z"
  currentMetrics:
    - type: Resource
      resource:
        name: cpu
        current:
          averageUtilization: 85
          averageValue: 850m
  conditions:
    - type: AbleToScale
      status: "True"
      reason: SucceededRescale
      lastTransitionTime: "2024-05-01T10:00:00Z"
""",
    """\
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
  namespace: shop
spec:
  minAvailable: 50%
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      app: web
status:
  currentHealthy: 3
  desiredHealthy: 2
  disruptionsAllowed: 1
  expectedPods: 3
  observedGeneration: 1
  disruptedPods:
    web-0: "2024-05-01T10:00:00Z"
""",
    """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: shops.example.com
spec:
  group: example.com
  scope: Namespaced
  preserveUnknownFields: false
  names:
    plural: shops
    singular: shop
    kind: Shop
    listKind: ShopList
    shortNames: [sh]
    categories: [all]
  conversion:
    strategy: Webhook
    webhook:
      conversionReviewVersions: [v1]
      clientConfig:
        caBundle: Y2E=
        service:
          namespace: shop
          name: shop-webhook
          path: /convert
          port: 443
  versions:
    - name: v1
      served: true
      storage: true
      deprecated: false
      subresources:
        status: {}
        scale:
          specReplicasPath: .spec.replicas
          statusReplicasPath: .status.replicas
          labelSelectorPath: .status.selector
      additionalPrinterColumns:
        - name: Replicas
          type: integer
          jsonPath: .spec.replicas
          description: Desired replicas
          priority: 0
        - name: Age
          type: date
          jsonPath: .metadata.creationTimestamp
      selectableFields:
        - jsonPath: .spec.color
      schema:
        openAPIV3Schema:
          type: object
          description: A shop.
          required: [spec]
          x-kubernetes-validations:
            - rule: self.metadata.name.size() < 64
              message: name too long
          properties:
            apiVersion:
              type: string
            kind:
              type: string
            metadata:
              type: object
            spec:
              type: object
              required: [image]
              x-kubernetes-validations:
                - rule: self.replicas <= self.maxReplicas
                  messageExpression: "'replicas ' + string(self.replicas)"
                  reason: FieldValueInvalid
                  fieldPath: .replicas
              properties:
                image:
                  type: string
                  pattern: ^[a-z0-9./:-]+$
                  maxLength: 253
                color:
                  type: string
                  enum: [red, green, blue]
                  default: blue
                replicas:
                  type: integer
                  format: int32
                  minimum: 0
                  maximum: 100
                  default: 1
                maxReplicas:
                  type: integer
                  nullable: true
                port:
                  x-kubernetes-int-or-string: true
                  anyOf:
                    - type: integer
                    - type: string
                ports:
                  type: array
                  maxItems: 16
                  x-kubernetes-list-type: map
                  x-kubernetes-list-map-keys: [name]
                  items:
                    type: object
                    required: [name]
                    properties:
                      name:
                        type: string
                      port:
                        type: integer
                labels:
                  type: object
                  additionalProperties:
                    type: string
                  x-kubernetes-map-type: granular
                config:
                  type: object
                  x-kubernetes-preserve-unknown-fields: true
                template:
                  type: object
                  x-kubernetes-embedded-resource: true
                  x-kubernetes-preserve-unknown-fields: true
                settings:
                  type: object
                  default:
                    mode: fast
                    nested: {anything: [1, 2, 3]}
                  example: {mode: slow}
                  oneOf:
                    - required: [mode]
                    - not:
                        required: [mode]
                  properties:
                    mode:
                      type: string
            status:
              type: object
              properties:
                replicas:
                  type: integer
                selector:
                  type: string
                conditions:
                  type: array
                  items:
                    type: object
                    x-kubernetes-preserve-unknown-fields: true
status:
  acceptedNames:
    plural: shops
    kind: Shop
  storedVersions: [v1]
  conditions:
    - type: Established
      status: "True"
      reason: InitialNamesAccepted
      message: the initial names have been accepted
      lastTransitionTime: "2024-05-01T10:00:00Z"
""",
    """\
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: policy
webhooks:
  - name: pods.policy.example.com
    admissionReviewVersions: [v1, v1beta1]
    sideEffects: None
    failurePolicy: Fail
    matchPolicy: Equivalent
    timeoutSeconds: 5
    clientConfig:
      caBundle: Y2E=
      service:
        namespace: policy
        name: webhook
        path: /validate
        port: 8443
    rules:
      - operations: [CREATE, UPDATE]
        apiGroups: [""]
        apiVersions: [v1]
        resources: [pods, pods/ephemeralcontainers]
        scope: Namespaced
    namespaceSelector:
      matchExpressions:
        - key: policy.example.com/ignore
          operator: DoesNotExist
    objectSelector:
      matchLabels:
        validate: "true"
    matchConditions:
      - name: not-kube-system
        expression: request.namespace != 'kube-system'
  - name: url.policy.example.com
    admissionReviewVersions: [v1]
    sideEffects: NoneOnDryRun
    clientConfig:
      url: https://policy.example.com/validate
""",
    """\
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: inject
webhooks:
  - name: inject.example.com
    admissionReviewVersions: [v1]
    sideEffects: None
    reinvocationPolicy: IfNeeded
    clientConfig:
      service:
        namespace: inject
        name: injector
    rules:
      - operations: ["*"]
        apiGroups: ["*"]
        apiVersions: ["*"]
        resources: ["*/*"]
""",
    """\
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: replica-limit
spec:
  failurePolicy: Fail
  paramKind:
    apiVersion: v1
    kind: ConfigMap
  matchConstraints:
    resourceRules:
      - apiGroups: [apps]
        apiVersions: [v1]
        operations: [CREATE, UPDATE]
        resources: [deployments]
  matchConditions:
    - name: not-system
      expression: "!object.metadata.namespace.startsWith('kube-')"
  variables:
    - name: replicas
      expression: object.spec.replicas
  validations:
    - expression: variables.replicas <= int(params.data.max)
      message: too many replicas
      reason: Invalid
  auditAnnotations:
    - key: replicas
      valueExpression: string(variables.replicas)
""",
    """\
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: replica-limit
spec:
  policyName: replica-limit
  validationActions: [Deny, Audit]
  paramRef:
    name: limits
    namespace: default
    parameterNotFoundAction: Deny
  matchResources:
    namespaceSelector:
      matchLabels:
        env: prod
""",
    """\
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.metrics.k8s.io
spec:
  group: metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  insecureSkipTLSVerify: false
  caBundle: Y2E=
  service:
    name: metrics-server
    namespace: kube-system
    port: 443
status:
  conditions:
    - type: Available
      status: "True"
      reason: Passed
      lastTransitionTime: "2024-05-01T10:00:00Z"
""",
    """\
apiVersion: v1
kind: ResourceQuota
metadata:
  name: compute
  namespace: shop
spec:
  hard:
    requests.cpu: "4"
    requests.memory: 8Gi
    limits.cpu: "8"
    pods: "20"
    count/deployments.apps: "10"
  scopeSelector:
    matchExpressions:
      - scopeName: PriorityClass
        operator: In
        values: [high]
status:
  hard:
    pods: "20"
  used:
    pods: "7"
""",
    """\
apiVersion: v1
kind: LimitRange
metadata:
  name: defaults
  namespace: shop
spec:
  limits:
    - type: Container
      default:
        cpu: 500m
        memory: 256Mi
      defaultRequest:
        cpu: 100m
      max:
        cpu: "2"
      min:
        cpu: 10m
      maxLimitRequestRatio:
        cpu: "10"
    - type: PersistentVolumeClaim
      max:
        storage: 50Gi
""",
    """\
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
  namespace: shop
  annotations:
    eks.amazonaws.com/role-arn: arn:aws:iam::123456789012:role/web
automountServiceAccountToken: false
secrets:
  - name: web-token
imagePullSecrets:
  - name: registry
""",
    """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    pod-security.kubernetes.io/enforce: restricted
spec:
  finalizers: [kubernetes]
status:
  phase: Active
  conditions:
    - type: NamespaceDeletionContentFailure
      status: "False"
      lastTransitionTime: "2024-05-01T10:00:00Z"
""",
    """\
apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels:
    kubernetes.io/hostname: node-1
    node-role.kubernetes.io/control-plane: ""
  annotations:
    k3s.io/node-args: '["server"]'
spec:
  podCIDR: 10.42.0.0/24
  podCIDRs: [10.42.0.0/24, fd00:42::/64]
  providerID: k3s://node-1
  unschedulable: false
  taints:
    - key: node-role.kubernetes.io/control-plane
      effect: NoSchedule
    - key: node.kubernetes.io/unreachable
      effect: NoExecute
      timeAdded: "2024-05-01T10:00:00Z"
status:
  capacity:
    cpu: "4"
    memory: 16283932Ki
    pods: "110"
    ephemeral-storage: 102350Mi
  allocatable:
    cpu: "4"
    memory: 16181532Ki
    pods: "110"
  conditions:
    - type: Ready
      status: "True"
      lastHeartbeatTime: "2024-05-01T10:00:00Z"
      lastTransitionTime: "2024-05-01T09:00:00Z"
      reason: KubeletReady
      message: kubelet is posting ready status
  addresses:
    - type: InternalIP
      address: 10.0.0.5
    - type: Hostname
      address: node-1
  daemonEndpoints:
    kubeletEndpoint:
      Port: 10250
  nodeInfo:
    machineID: 0a1b2c3d
    systemUUID: 0a1b2c3d-0000
    bootID: 9f8e7d6c
    kernelVersion: 6.1.0-18-amd64
    osImage: Debian GNU/Linux 12 (bookworm)
    containerRuntimeVersion: containerd://1.7.15-k3s1
    kubeletVersion: v1.32.0+k3s1
    kubeProxyVersion: v1.32.0+k3s1
    operatingSystem: linux
    architecture: amd64
  images:
    - names: [docker.io/rancher/mirrored-pause@sha256:abcd, docker.io/rancher/mirrored-pause:3.6]
      sizeBytes: 301463
  volumesInUse: [kubernetes.io/csi/ebs.csi.aws.com^vol-0123]
  volumesAttached:
    - name: kubernetes.io/csi/ebs.csi.aws.com^vol-0123
      devicePath: ""
  runtimeHandlers:
    - name: runc
      features:
        recursiveReadOnlyMounts: true
        userNamespaces: false
  features:
    supplementalGroupsPolicy: true
""",
    """\
apiVersion: v1
kind: Event
metadata:
  name: web-5d4f8c7b9-x2x7q.17c8a1f0e2b3c4d5
  namespace: shop
involvedObject:
  apiVersion: v1
  kind: Pod
  name: web-5d4f8c7b9-x2x7q
  namespace: shop
  uid: 0c8f3a2e-1234-4cde-9f00-aabbccddeeff
  resourceVersion: "12345"
  fieldPath: spec.containers{web}
reason: Pulled
message: Successfully pulled image
type: Normal
count: 3
source:
  component: kubelet
  host: node-1
firstTimestamp: "2024-05-01T10:00:00Z"
lastTimestamp: "2024-05-01T10:05:00Z"
eventTime: null
reportingComponent: kubelet
reportingInstance: node-1
action: Pulling
series:
  count: 3
  lastObservedTime: "2024-05-01T10:05:00.123456Z"
""",
    """\
apiVersion: events.k8s.io/v1
kind: Event
metadata:
  name: web.17c8a1f0e2b3c4d5
  namespace: shop
eventTime: "2024-05-01T10:00:00.000000Z"
reportingController: k8s.io/deployment-controller
reportingInstance: controller-manager-node-1
action: Scaling
reason: ScalingReplicaSet
note: Scaled up replica set web-5d4f8c7b9 to 3
type: Normal
regarding:
  apiVersion: apps/v1
  kind: Deployment
  name: web
  namespace: shop
""",
    """\
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: node-1
  namespace: kube-node-lease
  ownerReferences:
    - apiVersion: v1
      kind: Node
      name: node-1
      uid: 22222222-3333-4444-5555-666666666666
spec:
  holderIdentity: node-1
  leaseDurationSeconds: 40
  acquireTime: "2024-05-01T10:00:00.000000Z"
  renewTime: "2024-05-01T10:05:00.123456Z"
  leaseTransitions: 0
""",
    """\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  namespace: shop
  labels:
    kubernetes.io/service-name: web
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
addressType: IPv4
endpoints:
  - addresses: [10.42.0.17]
    conditions:
      ready: true
      serving: true
      terminating: false
    hostname: web-0
    nodeName: node-1
    zone: eu-west-1a
    targetRef:
      kind: Pod
      name: web-5d4f8c7b9-x2x7q
      namespace: shop
      uid: 0c8f3a2e-1234-4cde-9f00-aabbccddeeff
    hints:
      forZones:
        - name: eu-west-1a
ports:
  - name: http
    port: 8080
    protocol: TCP
    appProtocol: http
""",
    """\
apiVersion: v1
kind: Endpoints
metadata:
  name: web
  namespace: shop
subsets:
  - addresses:
      - ip: 10.42.0.17
        nodeName: node-1
        targetRef:
          kind: Pod
          name: web-5d4f8c7b9-x2x7q
    notReadyAddresses:
      - ip: 10.42.0.18
    ports:
      - name: http
        port: 8080
        protocol: TCP
""",
    """\
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata:
  name: high
value: 1000000
globalDefault: false
preemptionPolicy: PreemptLowerPriority
description: For user-facing services.
""",
    """\
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: gvisor
handler: runsc
overhead:
  podFixed:
    cpu: 250m
    memory: 120Mi
scheduling:
  nodeSelector:
    runtime: gvisor
  tolerations:
    - key: runtime
      operator: Equal
      value: gvisor
      effect: NoSchedule
""",
    """\
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata:
  name: ebs.csi.aws.com
spec:
  attachRequired: true
  podInfoOnMount: false
  requiresRepublish: false
  storageCapacity: true
  seLinuxMount: true
  fsGroupPolicy: File
  volumeLifecycleModes: [Persistent, Ephemeral]
  tokenRequests:
    - audience: sts.amazonaws.com
      expirationSeconds: 3600
""",
    """\
apiVersion: storage.k8s.io/v1
kind: CSINode
metadata:
  name: node-1
spec:
  drivers:
    - name: ebs.csi.aws.com
      nodeID: i-0123456789abcdef0
      topologyKeys: [topology.ebs.csi.aws.com/zone]
      allocatable:
        count: 25
""",
    """\
apiVersion: storage.k8s.io/v1
kind: VolumeAttachment
metadata:
  name: csi-0123
spec:
  attacher: ebs.csi.aws.com
  nodeName: node-1
  source:
    persistentVolumeName: pv-0001
status:
  attached: true
  attachmentMetadata:
    devicePath: /dev/xvdba
  attachError:
    message: timed out
    time: "2024-05-01T10:00:00Z"
""",
    """\
apiVersion: apps/v1
kind: ControllerRevision
metadata:
  name: db-7b9c6d5f4
  namespace: shop
revision: 3
data:
  spec:
    template:
      $patch: replace
      metadata:
        labels:
          app: db
      anythingGoes: true
""",
    """\
apiVersion: certificates.k8s.io/v1
kind: CertificateSigningRequest
metadata:
  name: node-1-serving
spec:
  request: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURSBSRVFVRVNULS0tLS0K
  signerName: kubernetes.io/kubelet-serving
  expirationSeconds: 86400
  usages: [digital signature, key encipherment, server auth]
  username: system:node:node-1
  groups: [system:nodes, system:authenticated]
  extra:
    authentication.kubernetes.io/credential-id: [X509SHA256=abcd]
status:
  conditions:
    - type: Approved
      status: "True"
      reason: AutoApproved
      lastUpdateTime: "2024-05-01T10:00:00Z"
""",
    """\
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: FlowSchema
metadata:
  name: k3s-controllers
spec:
  matchingPrecedence: 800
  priorityLevelConfiguration:
    name: workload-high
  distinguisherMethod:
    type: ByNamespace
  rules:
    - subjects:
        - kind: ServiceAccount
          serviceAccount:
            name: web
            namespace: shop
        - kind: Group
          group:
            name: system:nodes
      resourceRules:
        - verbs: ["*"]
          apiGroups: ["*"]
          resources: ["*"]
          namespaces: ["*"]
          clusterScope: true
      nonResourceRules:
        - verbs: [get]
          nonResourceURLs: [/healthz]
""",
    """\
apiVersion: flowcontrol.apiserver.k8s.io/v1
kind: PriorityLevelConfiguration
metadata:
  name: workload-high
spec:
  type: Limited
  limited:
    nominalConcurrencyShares: 40
    lendablePercent: 50
    borrowingLimitPercent: 100
    limitResponse:
      type: Queue
      queuing:
        queues: 128
        handSize: 6
        queueLengthLimit: 50
""",
    """\
apiVersion: authorization.k8s.io/v1
kind: SubjectAccessReview
spec:
  user: jane
  groups: [developers]
  uid: "1001"
  extra:
    scopes: [read]
  resourceAttributes:
    namespace: shop
    verb: get
    group: apps
    resource: deployments
    subresource: scale
    name: web
    fieldSelector:
      requirements:
        - key: spec.nodeName
          operator: In
          values: [node-1]
    labelSelector:
      rawSelector: app=web
""",
    """\
apiVersion: v1
kind: ReplicationController
metadata:
  name: legacy
  namespace: shop
spec:
  replicas: 1
  minReadySeconds: 0
  selector:
    app: legacy
  template:
    metadata:
      labels:
        app: legacy
    spec:
      containers:
        - name: legacy
          image: nginx:1.27
""",
)


def _manifests() -> list[dict[str, Any]]:
    return [yaml.safe_load(text) for text in MANIFESTS]


def _group_version(manifest: Mapping[str, Any]) -> tuple[str, str]:
    group, _, version = str(manifest["apiVersion"]).rpartition("/")
    return group, version


def _unknown(manifest: Mapping[str, Any]) -> list[str]:
    return unknown_fields(*_group_version(manifest), manifest["kind"], manifest)


def _pod() -> dict[str, Any]:
    return next(m for m in _manifests() if m["kind"] == "Pod")


class ValidManifestTests(SynchronousTestCase):
    """Realistic, valid manifests name no undeclared field: a false positive refuses them."""

    def test_no_false_positive(self) -> None:
        for manifest in _manifests():
            self.assertEqual(_unknown(manifest), [], manifest["kind"])

    def test_kinds_covered(self) -> None:
        """Each manifest's kind is compiled (an uncompiled kind would pass vacuously)."""
        kinds = set()
        for manifest in _manifests():
            node = kind_node(*_group_version(manifest), manifest["kind"])
            self.assertIsInstance(node, dict, manifest["kind"])
            kinds.add(manifest["kind"])
        self.assertGreaterEqual(len(kinds), 40)
        self.assertLessEqual(
            {
                "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "Service",
                "Ingress", "NetworkPolicy", "Role", "ClusterRole", "RoleBinding",
                "ClusterRoleBinding", "ConfigMap", "Secret", "PersistentVolumeClaim",
                "PersistentVolume", "StorageClass", "HorizontalPodAutoscaler",
                "PodDisruptionBudget", "CustomResourceDefinition",
                "ValidatingWebhookConfiguration", "APIService", "ResourceQuota", "LimitRange",
                "ServiceAccount", "Namespace", "Node", "Event", "Lease", "EndpointSlice",
                "PriorityClass", "RuntimeClass", "CSIDriver",
            },
            kinds,
        )  # fmt: skip

    def test_every_manifest_checked(self) -> None:
        """A top-level typo is found in every manifest: the check is not vacuous."""
        for manifest in _manifests():
            manifest["zzz"] = 1
            self.assertEqual(_unknown(manifest), ["zzz"], manifest["kind"])

    def test_every_declared_field(self) -> None:
        """An object with every field every kind's schema declares, a few levels deep, passes."""
        for group, version, kind, example in _examples():
            self.assertEqual(unknown_fields(group, version, kind, example), [])
            self.assertGreater(len(json.dumps(example)), 100, kind)


_REF = "#/components/schemas/"


def _examples() -> Iterator[tuple[str, str, str, Any]]:
    """Each kind the catalogue serves (group, version, kind) with its L{_example} object."""
    for entry in catalogue.resources():
        group, version = entry["group"], entry["version"]
        document = catalogue.openapi_document(group, version)
        assert document is not None
        schemas = json.loads(gzip.decompress(document))["components"]["schemas"]
        yield group, version, entry["kind"], _example(schemas, {"$ref": _REF + entry["schema"]}, 8)


def _example(schemas: Mapping[str, Any], schema: Mapping[str, Any], depth: int) -> Any:
    """A value filling every declared field of ``schema`` down to ``depth`` definitions."""
    ref = schema.get("$ref") or (schema.get("allOf") or [{}])[0].get("$ref")
    if ref is not None:
        if depth == 0:
            return None
        return _example(schemas, schemas[ref[len(_REF) :]], depth - 1)
    if schema.get("type") == "array":
        return [_example(schemas, schema.get("items", {}), depth)]
    if "properties" in schema:
        return {
            name: _example(schemas, member, depth) for name, member in schema["properties"].items()
        }
    if isinstance(schema.get("additionalProperties"), Mapping):
        return {"some.key/x": _example(schemas, schema["additionalProperties"], depth)}
    if "oneOf" in schema:
        return "1"  # int-or-string, quantity
    if schema.get("format") == "date-time":
        return "2024-01-01T00:00:00Z"
    if schema.get("type") == "object" or not schema.get("type"):
        return {"free": {"form": [1]}}
    return {"string": "s", "integer": 1, "number": 1.5, "boolean": True}.get(schema["type"], "x")


class UnknownFieldTests(SynchronousTestCase):
    """Undeclared fields are named by the paths kube-apiserver prints."""

    def test_paths(self) -> None:
        """Fields added to a valid Deployment, reported where they sit in the document."""
        deployment = _manifests()[0]
        template = deployment["spec"]["template"]
        deployment["metadata"]["labelz"] = {"a": "b"}
        deployment["spec"]["replicaz"] = 3
        template["spec"]["containers"][0]["imagez"] = "x"
        template["spec"]["containers"][1]["livenessProbe"]["exec"]["commandz"] = []
        template["spec"]["containers"][0]["livenessProbe"]["httpGet"]["httpHeaders"][0]["x"] = 1
        template["spec"]["volumes"][0]["configMap"]["items"][0]["keyz"] = "k"
        template["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"][0]["matchExpressions"][0]["operatorz"] = "In"
        template["spec"]["initContainers"][1]["Image"] = "case matters"
        deployment["status"]["conditions"][0]["lastProbeTimez"] = None
        self.assertEqual(
            _unknown(deployment),
            [
                "metadata.labelz",
                "spec.template.spec.affinity.nodeAffinity."
                "requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]."
                "matchExpressions[0].operatorz",
                "spec.template.spec.initContainers[1].Image",
                "spec.template.spec.containers[0].livenessProbe.httpGet.httpHeaders[0].x",
                "spec.template.spec.containers[0].imagez",
                "spec.template.spec.containers[1].livenessProbe.exec.commandz",
                "spec.template.spec.volumes[0].configMap.items[0].keyz",
                "spec.replicaz",
                "status.conditions[0].lastProbeTimez",
            ],
        )

    def test_document_order(self) -> None:
        pod = {"zeta": 1, "apiVersion": "v1", "spec": {"b": 1, "containers": [{"y": 1}], "a": 2}}
        pod["alpha"] = {"nested": True}
        self.assertEqual(
            unknown_fields("", "v1", "Pod", pod),
            ["zeta", "spec.b", "spec.containers[0].y", "spec.a", "alpha"],
        )

    def test_pod(self) -> None:
        pod = _pod()
        pod["spec"]["containerz"] = []
        pod["spec"]["volumes"][5]["projected"]["sources"][0]["serviceAccountToken"]["aud"] = "x"
        pod["spec"]["ephemeralContainers"][0]["targetContainer"] = "web"
        pod["status"]["containerStatuses"][0]["state"]["running"]["since"] = "now"
        pod["metadata"]["managedFields"][0]["fieldz"] = {}
        self.assertEqual(
            _unknown(pod),
            [
                "metadata.managedFields[0].fieldz",
                "spec.ephemeralContainers[0].targetContainer",
                "spec.volumes[5].projected.sources[0].serviceAccountToken.aud",
                "spec.containerz",
                "status.containerStatuses[0].state.running.since",
            ],
        )

    def test_maps_accept_any_key(self) -> None:
        """Labels, annotations, selectors, ConfigMap data, quantities: any key is a key."""
        config_map = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": {"spec": "x"}, "annotations": {"kind": "y"}},
            "data": {"metadata": "not a field", "a.b/c": "d"},
            "binaryData": {"spec": "AA=="},
        }
        self.assertEqual(unknown_fields("", "v1", "ConfigMap", config_map), [])
        config_map["datas"] = {}
        self.assertEqual(unknown_fields("", "v1", "ConfigMap", config_map), ["datas"])
        quota = {"spec": {"hard": {"anything/here": "1"}, "hardd": {}}}
        self.assertEqual(unknown_fields("", "v1", "ResourceQuota", quota), ["spec.hardd"])

    def test_map_values_checked(self) -> None:
        """Map values with a schema are walked; their keys become path segments."""
        crd = next(m for m in _manifests() if m["kind"] == "CustomResourceDefinition")
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        root["properties"]["spec"]["properties"]["image"]["patern"] = "x"
        root["properties"]["spec"]["properties"]["ports"]["items"]["whatever"] = 1
        root["properties"]["spec"]["default"] = {"free": {"form": 1}}
        crd["spec"]["versions"][0]["subresources"]["scale"]["specReplicas"] = ".spec"
        crd["spec"]["names"]["plurals"] = "x"
        self.assertEqual(
            _unknown(crd),
            [
                "spec.names.plurals",
                "spec.versions[0].subresources.scale.specReplicas",
                "spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.image.patern",
            ],
        )

    def test_free_form(self) -> None:
        """RawExtension, JSON, preserved unknown fields: anything goes below."""
        revision: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "ControllerRevision",
            "revision": 1,
        }
        revision["data"] = {"spec": {"template": {"anything": {"at": ["all", {"x": 1}]}}}}
        self.assertEqual(unknown_fields("apps", "v1", "ControllerRevision", revision), [])
        pod: dict[str, Any] = {
            "metadata": {"managedFields": [{"fieldsV1": {"f:spec": {"f:x": {}}}}]}
        }
        self.assertEqual(unknown_fields("", "v1", "Pod", pod), [])
        schemas = {
            "T": {
                "type": "object",
                "properties": {
                    "kept": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    "ref": {
                        "allOf": [{"$ref": _REF + "S"}],
                        "x-kubernetes-preserve-unknown-fields": True,
                    },
                    "strict": {"allOf": [{"$ref": _REF + "S"}], "description": "S"},
                    "number": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                },
            },
            "S": {"type": "object", "properties": {"a": {"type": "string"}}},
        }
        node = schema_nodes(schemas, {"T": "T"})["T"]
        obj = {
            "kept": {"x": {"y": 1}},
            "ref": {"b": 1},
            "strict": {"a": "", "b": 1},
            "number": {"c": 1},
            "kind": "T",
        }
        self.assertEqual(check(node, obj), ["strict.b"])

    def test_wrong_types_ignored(self) -> None:
        """A value of the wrong JSON type is a type error, not an unknown field."""
        pod = {
            "spec": {
                "containers": {"name": "not a list", "imagez": 1},
                "volumes": ["not an object", None, 3],
                "nodeSelector": ["a"],
                "hostNetwork": {"x": 1},
                "initContainers": [{"name": "x", "ports": {"containerPort": 1}}],
            },
            "metadata": None,
        }
        self.assertEqual(unknown_fields("", "v1", "Pod", pod), [])

    def test_unknown_kind(self) -> None:
        self.assertEqual(unknown_fields("example.com", "v1", "Shop", {"spec": {"x": 1}}), [])
        self.assertEqual(unknown_fields("apps", "v1", "Shop", {"spec": {"x": 1}}), [])
        self.assertEqual(unknown_fields("apps", "v1beta1", "Deployment", {"x": 1}), [])

    def test_type_fields(self) -> None:
        """apiVersion and kind are known at the top level, even if a schema lacks them."""
        schemas = {"T": {"type": "object", "properties": {"spec": {"type": "string"}}}}
        node = schema_nodes(schemas, {"T": "T"})["T"]
        self.assertEqual(check(node, {"apiVersion": "v1", "kind": "T", "x": 1}), ["x"])


class DepthTests(SynchronousTestCase):
    """Recursive definitions are unrolled to MAX_DEPTH definitions; below, anything goes."""

    def test_recursive_schema(self) -> None:
        schemas = {
            "Tree": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": _REF + "Tree"}},
                },
            }
        }
        node = schema_nodes(schemas, {"Tree": "Tree"})["Tree"]

        def nested(levels: int) -> dict[str, Any]:
            tree: dict[str, Any] = {"name": "leaf", "typo": 1}
            for _ in range(levels):
                tree = {"name": "n", "children": [tree]}
            return tree

        self.assertEqual(check(node, nested(2)), ["children[0].children[0].typo"])
        self.assertEqual(len(check(node, nested(MAX_DEPTH - 1))), 1)
        self.assertEqual(check(node, nested(MAX_DEPTH)), [])

    def test_crd_schema_nesting(self) -> None:
        """Nested JSONSchemaProps are checked at any depth a real CRD reaches."""
        crd = next(m for m in _manifests() if m["kind"] == "CustomResourceDefinition")
        schema: dict[str, Any] = {"type": "string", "typo": True}
        for _ in range(20):
            schema = {"type": "object", "properties": {"p": schema}}
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = schema
        path = "spec.versions[0].schema.openAPIV3Schema" + ".properties.p" * 20 + ".typo"
        self.assertEqual(_unknown(crd), [path])

    def test_shared_nodes(self) -> None:
        """Workloads of a group-version share their pod template nodes."""
        deployment = kind_node("apps", "v1", "Deployment")
        stateful_set = kind_node("apps", "v1", "StatefulSet")
        assert isinstance(deployment, dict) and isinstance(stateful_set, dict)
        first, second = deployment["spec"], stateful_set["spec"]
        assert isinstance(first, dict) and isinstance(second, dict)
        self.assertIs(first["template"], second["template"])
        template = first["template"]
        assert isinstance(template, dict) and isinstance(template["spec"], dict)
        self.assertIsInstance(template["spec"]["containers"], ListOf)
        self.assertIsNone(template["spec"]["nodeSelector"])
        crd = kind_node("apiextensions.k8s.io", "v1", "CustomResourceDefinition")
        assert isinstance(crd, dict)
        self.assertNotIsInstance(crd["metadata"], MapOf)
