"""
The node's API client decodes objects sharing their field names and short
strings, so that a cache of many alike objects holds each string once.
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from k3stw.kubeclient import SHARED_STRING, decode


class DecodeTests(SynchronousTestCase):
    def test_field_names_and_short_strings_are_shared_between_objects(self) -> None:
        text = json.dumps({"metadata": {"name": "web-1"}, "spec": {"image": "busybox:k3stw"}})
        first, second = decode(text), decode(text.encode())
        self.assertEqual(first, second)
        self.assertIs(first["spec"]["image"], second["spec"]["image"])
        (name_key,) = first["metadata"]
        (other_key,) = second["metadata"]
        self.assertIs(name_key, other_key)

    def test_long_strings_and_other_values_are_kept_as_decoded(self) -> None:
        long = "x" * (SHARED_STRING + 1)
        text = json.dumps({"data": long, "count": 3, "items": [None, True, 1.5]})
        first, second = decode(text), decode(text)
        self.assertEqual(first, {"data": long, "count": 3, "items": [None, True, 1.5]})
        self.assertIsNot(first["data"], second["data"])
