"""
CRI v1, the kubelet's side: the L{runtime.Runtime} protocol the kubelet uses,
its gRPC client (L{client}, the only module that imports grpc), an in-memory
runtime for tests (L{memory}), and the messages and stubs generated from
kubernetes/cri-api's ``api.proto`` (``api_pb2``, by ``tools/generate_cri.py``).
"""
