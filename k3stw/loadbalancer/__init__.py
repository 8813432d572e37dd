"""The agent's client-side load balancer: a TCP proxy with per-server health and failover."""
