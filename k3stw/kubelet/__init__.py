"""
The kubelet: registers its Node, renews its Lease and keeps the Node's
status fresh (pods, the runtime and the kubelet API come later).
"""
