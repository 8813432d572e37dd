"""
Service-account tokens, as kube-apiserver 1.32 issues and checks them:
JWTs signed with the cluster's service-account key (L{keys}), their claims
(L{claims}), ``serviceaccounts/<name>/token`` (L{request}), bearer-token
authentication (L{authenticator}), and the ``TokenReview`` and
``SelfSubjectReview`` answers (L{reviews}).
"""
