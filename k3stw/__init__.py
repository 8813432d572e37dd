"""
k3stw: the K3s architecture as a Twisted networking appliance.

Servers (``twistd k3s-server``) run the control plane and the datastore; agents
(``twistd k3s-agent``) join them and run only the node components.
"""

__version__ = "0.1.0"

#: The Kubernetes version this release speaks, as ``kubectl version`` shows it.
KUBERNETES_VERSION = "v1.32.4+k3stw1"
