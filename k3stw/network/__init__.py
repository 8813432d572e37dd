"""The node's cluster networking: flannel, kube-proxy, cluster DNS, network policy."""
