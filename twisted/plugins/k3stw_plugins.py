"""twistd dropins for k3stw; kept import-light so that a broken install fails loudly later."""

from twisted.application.service import ServiceMaker

k3s_server = ServiceMaker(
    "k3stw server",
    "k3stw.tap.server",
    "Run a k3stw server: the supervisor, the Kubernetes API and the datastore.",
    "k3s-server",
)
k3s_agent = ServiceMaker(
    "k3stw agent",
    "k3stw.tap.agent",
    "Run a k3stw agent: join a node to the servers of a cluster.",
    "k3s-agent",
)
