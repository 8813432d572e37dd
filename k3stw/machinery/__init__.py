"""
The floor below both halves of k3stw (the server's control plane and the
node's kubelet and agent): what each of them needs and none of them owns.

- L{objects}, L{times}, L{labels}, L{nodes}: Kubernetes objects as plain JSON
  dictionaries, their times, label selectors, the facts about Nodes that the
  kubelet writes and the controllers read.
- L{identity}: who a client certificate names.
- L{timing}: the one back-off policy and the one periodic-job idiom.
- L{processes}: child processes (etcd, containerd, CNI and iptables commands),
  supervised.
- L{source}, L{cache}, L{informer}, L{workqueue}, L{controller}: client-go's
  shared informers, indexers and rate-limited work queues, in Twisted's shape,
  on which every control loop is a C{sync(key)}.
"""
