"""
The kubelet's volumes: L{VolumeManager} sets up a pod's volumes and gives
its containers' CRI mounts (L{k3stw.kubelet.volumes.manager}).
"""

from k3stw.kubelet.volumes.manager import KUBELET_ROOT, VolumeError, VolumeManager
from k3stw.kubelet.volumes.mounter import Mounter, MountError, SystemMounter

__all__ = ["KUBELET_ROOT", "MountError", "Mounter", "SystemMounter", "VolumeError", "VolumeManager"]
