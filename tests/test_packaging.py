"""The wheel an appliance image installs carries both twistd plugins."""

from __future__ import annotations

import json
import subprocess
import venv
import zipfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support.wheel import build_wheel, install_wheel

PROBE = """
import json, k3stw
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from zope.interface.verify import verifyObject
found = {}
for plugin in getPlugins(IServiceMaker):
    if plugin.tapname.startswith("k3s-"):
        verifyObject(IServiceMaker, plugin)
        found[plugin.tapname] = type(plugin.options()).__module__
print(json.dumps({"plugins": found, "package": k3stw.__file__}))
"""


class WheelTests(SynchronousTestCase):
    def test_installed_wheel_exposes_both_plugins(self) -> None:
        """Built from source and installed alone, the wheel gives twistd k3s-server and
        k3s-agent, from its own files, not from the checkout."""
        work = Path(self.mktemp()).absolute()
        wheel = build_wheel(work)
        names = zipfile.ZipFile(wheel).namelist()
        self.assertIn("twisted/plugins/k3stw_plugins.py", names)
        self.assertIn("k3stw/py.typed", names)
        # The generated API catalogue ships as data.
        self.assertIn("k3stw/apiserver/catalogue/resources.json", names)
        self.assertIn("k3stw/apiserver/catalogue/openapi/apps_v1.json.gz", names)
        self.assertIn("k3stw/apiserver/catalogue/slim/apps_v1.json.gz", names)
        self.assertFalse([n for n in names if n.startswith("twisted/") and "__init__" in n])
        self.assertFalse([n for n in names if n.endswith("dropin.cache")])

        target = work / "venv"
        venv.create(target, with_pip=False)
        python = target / "bin" / "python"
        child_site = install_wheel(wheel, python)
        probe = subprocess.run(
            [str(python), "-I", "-c", PROBE], capture_output=True, cwd=work, timeout=120
        )
        self.assertEqual(probe.returncode, 0, probe.stderr.decode())
        result = json.loads(probe.stdout)
        self.assertEqual(
            result["plugins"], {"k3s-server": "k3stw.tap.server", "k3s-agent": "k3stw.tap.agent"}
        )
        # twistd may load the dropin from another copy on its plugin path (the test
        # environment's own), so check that the wheel put one into the new venv.
        self.assertTrue((child_site / "twisted" / "plugins" / "k3stw_plugins.py").is_file())
        self.assertFalse((child_site / "twisted" / "__init__.py").exists())
        self.assertTrue(result["package"].startswith(str(target)), result["package"])
