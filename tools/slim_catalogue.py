"""
Write the catalogue's slim schema documents: each group version's OpenAPI
document without the prose (descriptions), which is all the server's schema
checks and merge rules read.  Parsing a slim document at the first write of a
group version costs a fraction of the memory the whole document would.

    python tools/slim_catalogue.py [k3stw/apiserver/catalogue]

Run it after ``tools/generate_catalogue.py``; ``tests/test_catalogue.py``
checks that the slim documents are exactly this script's output.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

#: Keys of a schema the checks never read: prose for people.
PROSE = frozenset({"description", "title", "example", "externalDocs"})


def slim(schema: Any) -> Any:
    """A schema without its prose; property names (a ``description`` field too) are kept."""
    if not isinstance(schema, dict):
        return schema
    kept: dict[str, Any] = {}
    for key, item in schema.items():
        if key in PROSE:
            continue
        if key == "properties" and isinstance(item, dict):
            kept[key] = {name: slim(member) for name, member in item.items()}
        elif key in ("items", "additionalProperties", "not"):
            kept[key] = slim(item)
        elif key in ("allOf", "anyOf", "oneOf") and isinstance(item, list):
            kept[key] = [slim(member) for member in item]
        else:
            kept[key] = item
    return kept


def slim_document(document: bytes) -> bytes:
    """The slim, gzipped form of one gzipped document's schemas (reproducible bytes)."""
    schemas = json.loads(gzip.decompress(document))["components"]["schemas"]
    slimmed = {name: slim(schema) for name, schema in schemas.items()}
    text = json.dumps({"schemas": slimmed}, sort_keys=True, separators=(",", ":"))
    return gzip.compress(text.encode(), mtime=0)


def main(catalogue: Path) -> None:
    out = catalogue / "slim"
    out.mkdir(exist_ok=True)
    for path in sorted((catalogue / "openapi").glob("*.json.gz")):
        (out / path.name).write_bytes(slim_document(path.read_bytes()))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "k3stw/apiserver/catalogue"))
