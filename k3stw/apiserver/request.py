"""
Reading an API request: its bounded body, query parameters, media types and
decoded documents (JSON, YAML, the protobuf of kubectl's imperative creates),
and answering it.  Every problem is a L{StatusError} in kube-apiserver's words.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from twisted.web.server import Request

from k3stw.apiserver import protobuf
from k3stw.apiserver.patch import PatchError
from k3stw.apiserver.status import StatusError, bad_request, send_json
from k3stw.apiserver.tables import TableOptionError
from k3stw.machinery.labels import SelectorError
from k3stw.machinery.objects import Object
from k3stw.web import finish

#: kube-apiserver's request body limit.
MAX_BODY = 3 * 1024 * 1024
JSON_TYPES = ("", "application/json", "*/*")
YAML = "application/yaml"
PROTOBUF = "application/vnd.kubernetes.protobuf"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    APPLY_PATCH,
)
_UNKNOWN_FORMAT = (
    "the body of the request was in an unknown format - accepted media types include: "
)


class APIRequest(Request):
    """
    A request that stops buffering a body once it passes L{MAX_BODY}; the API
    then answers 413 instead of holding an unbounded upload.
    """

    body_too_large = False

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        # The API takes JSON and YAML, never HTML forms: no form parsing (its
        # Content-Type parse through the email package cost 5% of a create).
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(channel, *args, **kwargs)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self.body_too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        assert self.content is not None
        if self.content.tell() + len(data) > MAX_BODY:
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


def param(request: Request, name: str, default: str = "") -> str:
    """A query parameter's first value."""
    values = request.args.get(name.encode(), [])
    return values[0].decode("utf-8", "replace") if values else default


def flag(request: Request, name: str) -> bool:
    return param(request, name).lower() in ("true", "1")


def media_type(request: Request) -> str:
    """The request body's media type, without parameters."""
    header = request.getHeader(b"content-type") or b""
    return header.decode("latin-1").split(";")[0].strip().lower()


def wants_table(request: Request) -> bool:
    """kubectl's printing Accept asks for ``as=Table`` first."""
    accept = (request.getHeader(b"accept") or b"").decode("latin-1")
    return "as=Table" in accept.split(",")[0].replace(" ", "")


def raw_body(request: Request) -> bytes:
    return request.content.read() if request.content is not None else b""


def limit(request: Request) -> int:
    text = param(request, "limit")
    try:
        return max(int(text), 0) if text else 0
    except ValueError:
        raise bad_request(f'limit must be a number, not "{text}"') from None


def field_manager(request: Request) -> str:
    """The field manager of a write: ``fieldManager``, else the client program's name."""
    given = param(request, "fieldManager")
    if given:
        return given
    agent = (request.getHeader(b"user-agent") or b"unknown").decode("latin-1")
    return agent.split("/")[0].strip() or "unknown"


#: How deep a body may nest: far past any Kubernetes object, and far below
#: Python's recursion limit, which the patch and managed-fields code walk within.
MAX_DEPTH = 100
#: How many values a YAML body may hold once its aliases are expanded: per byte
#: of body, plus a floor.  A body without aliases holds fewer values than bytes;
#: a "billion laughs" body passes the bound within microseconds and is refused,
#: as kube-apiserver refuses it since CVE-2019-11253.
YAML_VALUES_PER_BYTE = 4
YAML_VALUES_FLOOR = 10_000


def decode_json(raw: bytes, duplicates: list[str] | None = None) -> Any:
    """
    A JSON body, bounded in depth; the last of a field named twice wins.

    :param duplicates: if given, gets the path of each field an object names
        twice (``spec.replicas``), as kube-apiserver's strict decoder names them.
    :raises ValueError: not JSON, or nested deeper than L{MAX_DEPTH}.
    """
    repeated: list[tuple[dict[str, Any], list[str]]] = []

    def pairs(members: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(members)
        if len(obj) != len(members):
            seen: set[str] = set()
            twice = []
            for key, _ in members:
                if key in seen:
                    twice.append(key)
                seen.add(key)
            repeated.append((obj, twice))
        return obj

    try:
        document = (
            json.loads(raw) if duplicates is None else json.loads(raw, object_pairs_hook=pairs)
        )
    except RecursionError:
        raise ValueError(f"exceeded max depth of {MAX_DEPTH}") from None
    _check_shape(document, None)
    if repeated and duplicates is not None:
        duplicates.extend(_duplicate_paths(document, dict((id(o), keys) for o, keys in repeated)))
    return document


def _duplicate_paths(document: Any, repeated: dict[int, list[str]]) -> list[str]:
    """The paths of the C{repeated} keys of each object (by id) within C{document}."""
    found: list[str] = []
    pending: list[tuple[Any, str]] = [(document, "")]
    while pending:
        value, path = pending.pop()
        if isinstance(value, dict):
            prefix = f"{path}." if path else ""
            found.extend(f"{prefix}{key}" for key in repeated.get(id(value), ()))
            pending.extend((v, prefix + k) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            pending.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(value))))
    return found


def yaml_document(raw: bytes) -> Any:
    """
    A YAML body, bounded in depth and in what its aliases expand to; a body
    that uses aliases comes back as a tree of its own (no shared values).

    :raises ValueError: not YAML, too deep, or aliases that expand too far.
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        document = yaml.load(raw.decode("utf-8"), Loader=loader)
    except yaml.YAMLError as e:
        raise ValueError(str(e)) from None
    except RecursionError:
        raise ValueError(f"exceeded max depth of {MAX_DEPTH}") from None
    if _check_shape(document, YAML_VALUES_FLOOR + YAML_VALUES_PER_BYTE * len(raw)):
        document = json.loads(json.dumps(document))
    return document


def _check_shape(document: Any, max_values: int | None) -> bool:
    """
    Walk C{document} as the tree it stands for (a value reached twice through
    aliases counts twice), within L{MAX_DEPTH} and C{max_values}.

    :return: whether some list or mapping was reached more than once.
    :raises ValueError: naming the bound that was passed.
    """
    pending: list[tuple[Any, int]] = [(document, 1)]
    seen: set[int] = set()
    shared = False
    values = 0
    while pending:
        value, depth = pending.pop()
        values += 1
        if max_values is not None and values > max_values:
            raise ValueError(f"excessive aliasing: the aliases expand past {max_values} values")
        children: Iterable[Any]
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            raise ValueError(f"exceeded max depth of {MAX_DEPTH}")
        if id(value) in seen:
            shared = True
        seen.add(id(value))
        pending.extend((child, depth + 1) for child in children)
    return shared


def request_duplicates(request: Request) -> list[str]:
    """The paths of the fields the request's body names twice (filled in as it is decoded)."""
    found: list[str] | None = getattr(request, "duplicate_fields", None)
    if found is None:
        found = []
        request.duplicate_fields = found  # type: ignore[attr-defined]
    return found


def object_body(request: Request) -> Object:
    """The object a create or update sends (JSON, YAML, or a supported protobuf)."""
    media = media_type(request)
    if media == PROTOBUF:
        return protobuf_document(raw_body(request))
    if media not in JSON_TYPES and media not in PATCH_TYPES and media != YAML:
        raise StatusError(415, f"{_UNKNOWN_FORMAT}application/json, application/yaml")
    raw = raw_body(request)
    duplicates = request_duplicates(request)
    try:
        document = decode_json(raw, duplicates) if media != YAML else yaml_document(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"the body of the request could not be decoded: {e}") from None
    if not isinstance(document, dict):
        raise bad_request("the body of the request must be a JSON object")
    return document


def protobuf_document(raw: bytes) -> Object:
    """A protobuf body (kubectl's typed commands), or 415 saying why it cannot be read."""
    try:
        return protobuf.decode_body(raw)
    except protobuf.UnsupportedProtobuf as e:
        raise StatusError(
            415, f"{_UNKNOWN_FORMAT}application/json, application/yaml ({e})"
        ) from None


def patch_body(request: Request) -> tuple[str, Any]:
    """A PATCH's media type and decoded patch document."""
    media = media_type(request)
    if media not in PATCH_TYPES:
        raise StatusError(415, _UNKNOWN_FORMAT + ", ".join(PATCH_TYPES))
    raw = raw_body(request)
    duplicates = request_duplicates(request) if media != PATCH_TYPES[0] else None
    try:
        body = decode_json(raw, duplicates) if media != APPLY_PATCH else yaml_document(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad_request(f"error decoding patch: {e}") from None
    if body is None and media != APPLY_PATCH:
        raise bad_request("the patch is empty")
    return media, body


def peek_body(request: Request) -> Any:
    """A create's JSON body (None if it is not JSON), leaving it to be read again."""
    if request.content is None:
        return None
    try:
        return decode_json(request.content.read())
    except ValueError:
        return None
    finally:
        request.content.seek(0)


def peek_name(request: Request) -> str | None:
    """The name in a create's body, leaving the body to be read again."""
    try:
        name = peek_body(request).get("metadata", {}).get("name")
    except AttributeError:
        name = None
    return name if isinstance(name, str) else None


def delete_options(request: Request) -> dict[str, Any]:
    """A DELETE's ``DeleteOptions`` (body and query), checked."""
    raw = raw_body(request)
    options: dict[str, Any]
    if media_type(request) == PROTOBUF:
        # kubectl drain's DeleteOptions (its grace period, its preconditions).
        options = protobuf_document(raw)
        if options.pop("kind") != "DeleteOptions":
            raise bad_request("the body of a delete must be DeleteOptions")
        del options["apiVersion"]
    elif not raw.strip() or media_type(request) not in JSON_TYPES:
        options = {}
    else:
        try:
            options = decode_json(raw)
        except ValueError as e:
            raise bad_request(f"the body of the request could not be decoded: {e}") from None
        if not isinstance(options, dict):
            raise bad_request("DeleteOptions must be an object")
    if grace := param(request, "gracePeriodSeconds"):
        try:
            options["gracePeriodSeconds"] = int(grace)
        except ValueError:
            raise bad_request(f'strconv.ParseInt: parsing "{grace}": invalid syntax') from None
    period = options.get("gracePeriodSeconds")
    if period is not None and (not isinstance(period, int) or isinstance(period, bool)):
        raise bad_request("gracePeriodSeconds must be an integer")
    if given := param(request, "propagationPolicy"):
        options["propagationPolicy"] = given
    policy = options.get("propagationPolicy")
    if policy and policy not in ("Orphan", "Background", "Foreground"):
        raise bad_request(
            f'Unsupported value: "{policy}": supported values: "Foreground", "Background", "Orphan"'
        )
    return options


def as_status_error(error: SelectorError | TableOptionError | PatchError) -> StatusError:
    """The Status of an error the pure API modules raise; each carries its HTTP code."""
    return StatusError(
        getattr(error, "code", 400),
        getattr(error, "message", None) or str(error),
        getattr(error, "details", None),
        getattr(error, "reason", None),
    )


def answer(request: Request, code: int, document: object) -> None:
    """Answer with C{document} as the API's JSON."""
    finish(request, send_json(request, code, document))


def answer_raw(request: Request, body: bytes, content_type: bytes) -> None:
    """Answer with a body already encoded (discovery and OpenAPI documents)."""
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-cache, private")
    finish(request, body)
