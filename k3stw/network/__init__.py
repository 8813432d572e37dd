"""The node's cluster networking: flannel, kube-proxy, DNS, ServiceLB, network policy."""
