"""
The kubelet's pod workers: what makes a bound pod run.  L{spec} turns a
pod into CRI configs, L{status} turns CRI state back into the pod's status,
L{worker} drives one pod on a L{k3stw.kubelet.cri.runtime.Runtime}, and
L{volumes} is the seam to the volume manager.
"""
