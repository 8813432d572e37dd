"""
A node's cluster networking, as k3s gives every node: flannel's routes
between nodes' pod ranges, kube-proxy's Service rules, cluster DNS, the
network policy controller (and, on servers, ServiceLB), each fed by shared
informers and built from the kernel's own facilities (routes, VXLAN,
iptables).  L{k3stw.network.node} assembles them.
"""
