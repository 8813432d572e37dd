"""
The deploy controller on the in-memory server, on a Clock, over a temporary
manifests directory: files applied and kept applied under their Addons.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from k3stw.apiserver.kinds import configmaps, events
from k3stw.controllers.deploy import (
    GVK_ANNOTATION,
    INTERVAL,
    OWNER_GVK,
    OWNER_NAME,
    SET_HASH,
    DeployController,
    addon_name,
    checksum,
    install_addon_crd,
    parse_manifest,
    set_hash,
)
from k3stw.controllers.events import EventRecorder
from k3stw.machinery.objects import Object
from tests.support.apiserver import MemoryServer


def config_map(name: str, namespace: str = "default", **data: str) -> str:
    return (
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
        f"data: {json.dumps(data)}\n"
    )


class ParsingTests(SynchronousTestCase):
    def test_documents_and_lists_are_objects(self) -> None:
        text = (
            config_map("a")
            + "---\n# nothing\n---\n"
            + json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "List",
                    "items": [{"apiVersion": "v1", "kind": "Secret"}],
                }
            )
        )
        self.assertEqual(
            [obj["kind"] for obj in parse_manifest(text.encode())], ["ConfigMap", "Secret"]
        )

    def test_a_document_without_kind_is_refused(self) -> None:
        self.assertRaises(ValueError, parse_manifest, b"apiVersion: v1\nmetadata: {}\n")
        self.assertRaises(ValueError, parse_manifest, b"a: [1\n")

    def test_the_addon_is_named_up_to_the_first_dot(self) -> None:
        self.assertEqual(addon_name(Path("/m/sub/coredns.v2.yaml")), "coredns")


class DeployControllerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = MemoryServer(self)
        self.server.run(install_addon_crd(self.server.store))
        self.base = Path(self.mktemp())
        self.base.mkdir()
        self.controller = self.controller_for(frozenset())

    def controller_for(self, disables: frozenset[str]) -> DeployController:
        store = self.server.store
        recorder = EventRecorder(store, self.server.clock, "deploy", "server-1")
        return DeployController(
            store, self.server.registry, self.base, disables, recorder, self.server.clock
        )

    def write(self, relative: str, text: str, mtime: float) -> Path:
        path = self.base / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        # The controller notices edits by mtime: set it, never rely on the clock's tick.
        os.utime(path, (mtime, mtime))
        return path

    def scan(self) -> None:
        self.server.run(self.controller.scan())

    def config_map(self, name: str, namespace: str = "default") -> Object | None:
        if not self.server.exists("", "configmaps", name, namespace):
            return None
        return self.server.get("", "configmaps", name, namespace)

    def addon(self, name: str) -> Object | None:
        if not self.server.exists("k3s.cattle.io", "addons", name, "kube-system"):
            return None
        return self.server.get("k3s.cattle.io", "addons", name, "kube-system")

    def event_reasons(self, addon: str) -> list[tuple[str, str, str]]:
        listed = self.server.run(self.server.store.list(events.RESOURCE, "kube-system"))
        return [
            (e["type"], e["reason"], e["message"])
            for e in listed.items
            if e["involvedObject"]["name"] == addon and e["involvedObject"]["kind"] == "Addon"
        ]

    def test_a_file_is_applied_under_its_addon(self) -> None:
        path = self.write("web.yaml", config_map("web", color="blue"), 1000)
        self.scan()
        made = self.config_map("web")
        assert made is not None
        self.assertEqual(made["data"], {"color": "blue"})
        annotations = made["metadata"]["annotations"]
        self.assertEqual(annotations[OWNER_GVK], "k3s.cattle.io/v1, Kind=Addon")
        self.assertEqual(annotations[OWNER_NAME], "web")
        self.assertEqual(made["metadata"]["labels"][SET_HASH], set_hash("web"))
        addon = self.addon("web")
        assert addon is not None
        self.assertEqual(addon["spec"]["source"], str(path))
        self.assertEqual(addon["spec"]["checksum"], checksum(path.read_bytes()))
        self.assertEqual(addon["metadata"]["annotations"][GVK_ANNOTATION], "v1, Kind=ConfigMap")
        reasons = [reason for _, reason, _ in self.event_reasons("web")]
        self.assertEqual(reasons, ["ApplyingManifest", "AppliedManifest"])

    def test_an_edit_updates_and_prunes_what_the_file_no_longer_has(self) -> None:
        two = config_map("web", color="blue", size="L") + "---\n" + config_map("extra")
        self.write("web.yaml", two, 1000)
        self.scan()
        self.assertIsNotNone(self.config_map("extra"))
        self.write("web.yaml", config_map("web", color="red"), 2000)
        self.scan()
        made = self.config_map("web")
        assert made is not None
        self.assertEqual(made["data"], {"color": "red"})
        self.assertIsNone(self.config_map("extra"))

    def test_an_unchanged_file_is_not_applied_again(self) -> None:
        self.write("web.yaml", config_map("web", color="blue"), 1000)
        self.scan()
        version = self.config_map("web")["metadata"]["resourceVersion"]  # type: ignore[index]
        self.write("web.yaml", config_map("web", color="blue"), 2000)
        self.scan()
        self.assertEqual(
            self.config_map("web")["metadata"]["resourceVersion"],  # type: ignore[index]
            version,
        )

    def test_a_removed_file_takes_its_objects_and_addon(self) -> None:
        path = self.write("sub/web.yml", config_map("web"), 1000)
        self.scan()
        self.assertIsNotNone(self.config_map("web"))
        path.unlink()
        self.scan()
        self.assertIsNone(self.config_map("web"))
        self.assertIsNone(self.addon("web"))

    def test_a_broken_file_is_reported_and_does_not_block_the_others(self) -> None:
        self.write("a-broken.yaml", "apiVersion: v1\nkind: [\n", 1000)
        self.write(
            "b-bad-kind.yaml", "apiVersion: nope/v1\nkind: Nothing\nmetadata: {name: x}\n", 1000
        )
        self.write(
            "c-good.json",
            json.dumps(
                json.loads(
                    json.dumps(
                        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "good"}}
                    )
                )
            ),
            1000,
        )
        self.scan()
        self.assertIsNotNone(self.config_map("good"))
        broken = self.event_reasons("a-broken")
        self.assertEqual([(t, r) for t, r, _ in broken], [("Warning", "ParseManifestFailed")])
        self.assertIn("Parse manifest at ", broken[0][2])
        bad = self.event_reasons("b-bad-kind")
        self.assertEqual(bad[-1][:2], ("Warning", "ApplyManifestFailed"))
        self.assertIn('no matches for kind "Nothing" in version "nope/v1"', bad[-1][2])
        self.assertNotIn("checksum", self.addon("a-broken")["spec"])  # type: ignore[index]
        # Fixed, it is applied on the next pass.
        self.write("a-broken.yaml", config_map("fixed"), 2000)
        self.scan()
        self.assertIsNotNone(self.config_map("fixed"))

    def test_a_skip_twin_leaves_the_file_alone(self) -> None:
        self.write("web.yaml", config_map("web"), 1000)
        self.write("web.yaml.skip", "", 1000)
        self.write(".hidden.yaml", config_map("hidden"), 1000)
        self.write("notes.txt", config_map("notes"), 1000)
        self.scan()
        self.assertIsNone(self.config_map("web"))
        self.assertIsNone(self.config_map("hidden"))
        self.assertIsNone(self.config_map("notes"))
        self.assertIsNone(self.addon("web"))

    def test_a_disabled_component_is_deleted_with_its_file(self) -> None:
        traefik = self.write("traefik.yaml", config_map("traefik"), 1000)
        self.write("metrics-server/service.yaml", config_map("metrics"), 1000)
        self.write("web.yaml", config_map("web"), 1000)
        self.scan()
        self.assertIsNotNone(self.config_map("traefik"))
        self.controller = self.controller_for(frozenset({"traefik", "metrics-server"}))
        self.scan()
        self.assertFalse(traefik.exists())
        self.assertIsNone(self.config_map("traefik"))
        self.assertIsNone(self.addon("traefik"))
        self.assertIsNone(self.config_map("metrics"))
        self.assertIsNotNone(self.config_map("web"))

    def test_a_symlinked_directory_is_followed_and_its_files_never_removed(self) -> None:
        elsewhere = Path(self.mktemp())
        elsewhere.mkdir()
        (elsewhere / "linked.yaml").write_text(config_map("linked"))
        (self.base / "extra").symlink_to(elsewhere.absolute())
        self.scan()
        self.assertIsNotNone(self.config_map("linked"))
        self.controller = self.controller_for(frozenset({"linked"}))
        self.scan()
        self.assertIsNone(self.config_map("linked"))
        self.assertTrue((elsewhere / "linked.yaml").exists())

    def test_the_directory_is_walked_every_15_seconds_while_leading(self) -> None:
        self.write("one.yaml", config_map("one"), 1000)
        self.server.start(self.controller)
        self.assertIsNotNone(self.config_map("one"))
        self.write("two.yaml", config_map("two"), 1000)
        self.server.clock.advance(INTERVAL - 1)
        self.assertIsNone(self.config_map("two"))
        self.server.clock.advance(1)
        self.assertIsNotNone(self.config_map("two"))
        self.controller.stopService()
        self.assertEqual(self.server.clock.getDelayedCalls(), [])
        self.assertTrue(configmaps.RESOURCE)
