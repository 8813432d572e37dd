"""
``PUT /v1-k3s/token``'s work, on the in-memory datastore: the token files and
passwd rewritten, the bootstrap data re-sealed under the new token (the old
copy gone), and k3s's refusals.
"""

from __future__ import annotations

import json
from pathlib import Path

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.status import StatusError
from k3stw.datastore.memory import MemoryDatastore
from k3stw.server import bootstrapdata
from k3stw.server.tokenrotation import rotate_token
from tests.support.apiserver import START

CA_HASH = "ab" * 32


class TokenRotationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server_dir = Path(self.mktemp())
        (self.server_dir / "tls").mkdir(parents=True)
        (self.server_dir / "tls" / "server-ca.crt").write_text("the CA")
        clock = Clock()
        clock.advance(START)
        self.datastore = MemoryDatastore(clock)
        self.datastore.startService()
        self.addCleanup(self.datastore.stopService)
        self.passwords = {"server": "old-secret", "node": "old-secret"}
        sealed = bootstrapdata.encrypt("old-secret", b'{"ServerCA": {"Content": "the CA"}}')
        self.successResultOf(self.datastore.create(bootstrapdata.storage_key("old-secret"), sealed))

    def rotate(self, token: str) -> None:
        self.successResultOf(
            ensureDeferred(
                rotate_token(self.server_dir, CA_HASH, self.passwords, self.datastore, token)
            )
        )

    def test_the_new_token_replaces_the_old_everywhere(self) -> None:
        self.rotate("new-secret")
        self.assertEqual(self.passwords, {"server": "new-secret", "node": "new-secret"})
        token = (self.server_dir / "token").read_text()
        self.assertEqual(token, f"K10{CA_HASH}::server:new-secret\n")
        passwd = (self.server_dir / "cred" / "passwd").read_text()
        self.assertIn("new-secret,server,server,k3s:server", passwd)
        self.assertIn("new-secret,node,node,k3s:agent", passwd)
        old = self.successResultOf(self.datastore.get(bootstrapdata.storage_key("old-secret")))
        self.assertIsNone(old)
        new = self.successResultOf(self.datastore.get(bootstrapdata.storage_key("new-secret")))
        assert new is not None
        document = json.loads(bootstrapdata.decrypt("new-secret", new.value))
        self.assertIn("ServerCA", document)
        self.assertIn("PasswdFile", document)

    def test_a_separate_agent_token_is_kept(self) -> None:
        self.passwords["node"] = "agent-secret"
        self.rotate(f"K10{CA_HASH}::server:new-secret")
        self.assertEqual(self.passwords, {"server": "new-secret", "node": "agent-secret"})

    def test_a_token_for_another_ca_or_a_bootstrap_token_is_refused(self) -> None:
        for token, message in (
            (f"K10{'cd' * 32}::server:x", "token CA hash does not match"),
            ("abcdef.0123456789abcdef", "a bootstrap token cannot be the server token"),
        ):
            failure = self.failureResultOf(
                ensureDeferred(
                    rotate_token(self.server_dir, CA_HASH, self.passwords, self.datastore, token)
                ),
                StatusError,
            )
            self.assertIn(message, failure.value.message)
        self.assertEqual(self.passwords["server"], "old-secret")
