"""The kubelet API's authentication and authorization."""

from __future__ import annotations

import datetime

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from k3stw.kubelet.auth import allow_apiserver, forbidden_message, request_attributes, verified_user
from k3stw.machinery.identity import User
from tests.support.kubelet import pki, wall_clock_now


class AuthenticationTests(SynchronousTestCase):
    """Client certificates, attributes and the authorizer."""

    def cas(self) -> list[x509.Certificate]:
        return [pki().client_ca.certificate]

    def test_certificate_from_the_client_ca(self) -> None:
        """CN is the user, O the groups."""
        user = verified_user(pki().apiserver.certificate, self.cas(), wall_clock_now())
        assert user is not None
        self.assertEqual((user.name, user.groups), ("system:apiserver", ("system:masters",)))

    def test_certificates_that_do_not_authenticate(self) -> None:
        """Another CA's, a serving-only certificate, and one outside its validity."""
        now = wall_clock_now()
        self.assertIsNone(verified_user(pki().stranger.certificate, self.cas(), now))
        self.assertIsNone(verified_user(pki().server_as_client.certificate, self.cas(), now))
        later = now + datetime.timedelta(days=400)
        self.assertIsNone(verified_user(pki().apiserver.certificate, self.cas(), later))
        earlier = now - datetime.timedelta(days=1)
        self.assertIsNone(verified_user(pki().apiserver.certificate, self.cas(), earlier))

    def test_attributes_from_method_and_path(self) -> None:
        """The kubelet's verbs and subresources."""
        self.assertEqual(request_attributes(b"GET", b"/healthz").subresources, ("proxy",))
        self.assertEqual(request_attributes(b"GET", b"/pods").subresources, ("proxy",))
        self.assertEqual(request_attributes(b"GET", b"/stats/summary").subresources, ("stats",))
        self.assertEqual(request_attributes(b"GET", b"/stats").subresources, ("stats",))
        self.assertEqual(request_attributes(b"GET", b"/statsx").subresources, ("proxy",))
        self.assertEqual(
            request_attributes(b"GET", b"/metrics/cadvisor").subresources, ("metrics",)
        )
        self.assertEqual(request_attributes(b"GET", b"/logs/syslog").subresources, ("log",))
        self.assertEqual(request_attributes(b"POST", b"/exec/a/b/c").verb, "create")
        self.assertEqual(request_attributes(b"DELETE", b"/x").verb, "delete")
        self.assertEqual(request_attributes(b"HEAD", b"/healthz").verb, "")

    def test_authorizer(self) -> None:
        """system:masters and the apiserver's kubelet-client names; no one else."""
        attributes = request_attributes(b"GET", b"/pods")
        self.assertTrue(allow_apiserver(User("system:apiserver", ("system:masters",)), attributes))
        self.assertTrue(allow_apiserver(User("kube-apiserver-kubelet-client", ()), attributes))
        self.assertTrue(allow_apiserver(User("system:kube-apiserver", ()), attributes))
        self.assertFalse(allow_apiserver(User("system:node:other", ("system:nodes",)), attributes))

    def test_forbidden_wording(self) -> None:
        """The kubelet's 403 text."""
        self.assertEqual(
            forbidden_message(
                User("system:node:other", ()), request_attributes(b"GET", b"/stats/summary")
            ),
            "Forbidden (user=system:node:other, verb=get, resource=nodes, "
            "subresource(s)=[stats])\n",
        )
