"""
The Kubernetes REST API as a twisted.web resource: ``/version``, ``/api``,
``/apis``, ``/openapi`` and every resource path below them.

This layer only speaks HTTP: it parses paths, parameters and bodies, asks
L{k3stw.apiserver.auth} whether the caller may, and hands the verb to
L{ObjectStore}.  Every failure leaves as a ``Status``.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote
from weakref import WeakKeyDictionary

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from k3stw.apiserver import discovery, protobuf, selectors, tables
from k3stw.apiserver import patch as patching
from k3stw.apiserver.auth import Attributes, User, authorize, user_of_certificate
from k3stw.apiserver.dryrun import DryRunDatastore
from k3stw.apiserver.nodeproxy import NodeProxy
from k3stw.apiserver.patch import PatchError
from k3stw.apiserver.registry import CRDS, Registry, ResourceType, resources_of_crd
from k3stw.apiserver.selectors import SelectorError
from k3stw.apiserver.status import StatusError, bad_request, send_json, status
from k3stw.apiserver.storage import FANOUT_CACHE, Object, ObjectStore, Predicate, merge_update
from k3stw.apiserver.tables import TableOptionError
from k3stw.controllers.crds import CLEANUP
from k3stw.datastore.interface import Compacted, IWatch, WatchOverflow
from k3stw.logs import Logger

#: kube-apiserver's request body limit.
MAX_BODY = 3 * 1024 * 1024
#: A watch without timeoutSeconds ends after 30-60 minutes, as kube-apiserver's do.
MIN_WATCH_SECONDS = 1800
NOT_FOUND = "the server could not find the requested resource"
JSON_TYPES = ("", "application/json", "*/*")
PROTOBUF = "application/vnd.kubernetes.protobuf"
#: The verb a proxied request is authorized as, by its method (kube-apiserver's RequestInfo).
PROXY_VERBS = {
    b"GET": "get",
    b"HEAD": "get",
    b"POST": "create",
    b"PUT": "update",
    b"PATCH": "patch",
    b"DELETE": "delete",
}
PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
)


class APIRequest(Request):
    """
    A request that stops buffering a body once it passes L{MAX_BODY}; the API
    then answers 413 instead of holding an unbounded upload.
    """

    body_too_large = False
    # The API takes JSON and YAML, never HTML forms: skip Twisted's form parsing.
    _parsePOSTFormSubmission = False

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


@dataclass(frozen=True)
class Target:
    """Which objects a resource path names."""

    resource: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def _param(request: Request, name: str, default: str = "") -> str:
    values = request.args.get(name.encode(), [])
    return values[0].decode("utf-8", "replace") if values else default


def _flag(request: Request, name: str) -> bool:
    return _param(request, name).lower() in ("true", "1")


def _media_type(header: bytes | None) -> str:
    return (header or b"").decode("latin-1").split(";")[0].strip().lower()


def wants_table(request: Request) -> bool:
    """kubectl's printing Accept asks for ``as=Table`` first."""
    accept = (request.getHeader(b"accept") or b"").decode("latin-1")
    return "as=Table" in accept.split(",")[0].replace(" ", "")


class KubernetesAPI(Resource):
    """The whole API subtree; mounted at ``/api``, ``/apis``, ``/version`` and ``/openapi``."""

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        store: ObjectStore,
        registry: Registry,
        clock: IReactorTime,
        server_address: str,
        node_proxy: NodeProxy | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.node_proxy = node_proxy
        # dryRun=All runs the same verbs over a datastore view that never writes.
        self.dry_run_store = ObjectStore(DryRunDatastore(store.datastore), clock, dry_run=True)
        self.registry = registry
        self.clock = clock
        self.server_address = server_address
        self.openapi = discovery.OpenAPI(registry)
        self._users: WeakKeyDictionary[object, User] = WeakKeyDictionary()
        self._lines = EventLines()

    def render(self, request: Request) -> int:
        Deferred.fromCoroutine(self._respond(request))
        return NOT_DONE_YET

    async def _respond(self, request: Request) -> None:
        try:
            result = await self._dispatch(request)
        except StatusError as e:
            self._finish(request, send_json(request, e.code, e.status()))
        except (SelectorError, TableOptionError, PatchError) as e:
            error = _as_status_error(e)
            self._finish(request, send_json(request, error.code, error.status()))
        except Exception:
            self._log.failure(
                "Internal error serving {method} {path}",
                Failure(),
                method=request.method,
                path=request.path,
            )
            body = send_json(request, 500, status(500, "Internal error occurred"))
            self._finish(request, body)
        else:
            if result is not None:
                code, document = result
                self._finish(request, send_json(request, code, document))

    def _finish(self, request: Request, body: bytes) -> None:
        if getattr(request, "_disconnected", False) or getattr(request, "finished", False):
            return
        request.write(body)
        request.finish()

    # Routing

    async def _dispatch(self, request: Request) -> tuple[int, object] | None:
        if getattr(request, "body_too_large", False):
            raise StatusError(413, "Request entity too large: limit is 3145728")
        parts = [unquote(p) for p in request.path.decode("latin-1").strip("/").split("/") if p]
        head = parts[0] if parts else ""
        if head == "openapi":
            return self._openapi(request, parts[1:])
        user = self._authenticate(request)
        if head == "version" and len(parts) == 1:
            return 200, discovery.version_info()
        if head == "api":
            return await self._api(request, user, "", parts[1:])
        if head == "apis":
            if len(parts) == 1:
                return self._discovery(request, core=False)
            if len(parts) == 2:
                return _found(discovery.api_group(self.registry, parts[1]))
            return await self._api(request, user, parts[1], parts[2:])
        raise StatusError(404, NOT_FOUND)

    def _authenticate(self, request: Request) -> User:
        # A connection's client certificate never changes: read it once per connection.
        user = self._users.get(request.channel)
        if user is None:
            transport = getattr(request, "transport", None)
            certificate = transport.getPeerCertificate() if transport is not None else None
            user = user_of_certificate(certificate) if certificate is not None else None
            if user is None:
                raise StatusError(401, "Unauthorized")
            self._users[request.channel] = user
        return user

    def _openapi(self, request: Request, parts: list[str]) -> tuple[int, object] | None:
        if parts == ["v3"]:
            body = self.openapi.index()
        elif parts[:1] == ["v3"] and (document := self.openapi.document("/".join(parts[1:]))):
            body = document
        else:
            # v2 is asked for as protobuf only; a JSON v2 document breaks kubectl apply.
            raise StatusError(404, NOT_FOUND)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-cache, private")
        self._finish(request, body)
        return None

    def _discovery(self, request: Request, core: bool) -> tuple[int, object] | None:
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        if "as=APIGroupDiscoveryList" in accept:
            body = json.dumps(discovery.aggregated_discovery(self.registry, core)).encode()
            request.setHeader(b"content-type", discovery.AGGREGATED_CONTENT_TYPE.encode())
            request.setHeader(b"cache-control", b"no-cache, private")
            self._finish(request, body)
            return None
        if core:
            return 200, discovery.api_versions(self.server_address)
        return 200, discovery.api_group_list(self.registry)

    async def _api(
        self, request: Request, user: User, group: str, parts: list[str]
    ) -> tuple[int, object] | None:
        if not group and not parts:
            return self._discovery(request, core=True)
        if not parts:
            raise StatusError(404, NOT_FOUND)
        version, rest = parts[0], parts[1:]
        if not rest:
            return _found(discovery.api_resource_list(self.registry, group, version))
        if (group, version) == ("", "v1") and rest[0] == "nodes" and rest[2:3] == ["proxy"]:
            await self._proxy_to_node(request, user, rest[1])
            return None
        target = self._target(group, version, rest)
        verb = self._verb(request, target)
        if verb == "create" and user.node_name is not None:
            # A node may create only its own Node (NodeRestriction): authorize the named object.
            target = Target(target.resource, target.namespace, self._peek_name(request), None)
        await authorize(
            user,
            Attributes(verb, target.resource, target.namespace, target.name, target.subresource),
            self._pod_uses,
        )
        return await self._serve(request, verb, target)

    async def _proxy_to_node(self, request: Request, user: User, node: str) -> None:
        nodes = self.registry.require("", "v1", "nodes")
        verb = PROXY_VERBS.get(request.method)
        if verb is None:
            raise StatusError(
                405, "the server does not allow this method on the requested resource"
            )
        await authorize(user, Attributes(verb, nodes, None, node, "proxy"), self._pod_uses)
        if self.node_proxy is None:
            raise StatusError(501, "the proxy subresource is not available in this release")
        await self.node_proxy.relay(request, node)

    def _target(self, group: str, version: str, rest: list[str]) -> Target:
        lookup = self.registry.lookup
        if len(rest) >= 3 and rest[0] == "namespaces":
            inner = lookup(group, version, rest[2])
            if inner is not None and inner.namespaced and len(rest) <= 5:
                name = rest[3] if len(rest) > 3 else None
                sub = rest[4] if len(rest) > 4 else None
                return self._checked(Target(inner, rest[1], name, sub))
        resource = lookup(group, version, rest[0])
        if resource is None or len(rest) > 3 or (resource.namespaced and len(rest) > 1):
            raise StatusError(404, NOT_FOUND)
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        return self._checked(Target(resource, None, name, sub))

    def _peek_name(self, request: Request) -> str | None:
        """The name in a create's body, leaving the body to be read again."""
        if request.content is None:
            return None
        try:
            name = json.loads(request.content.read()).get("metadata", {}).get("name")
        except (ValueError, AttributeError):
            name = None
        finally:
            request.content.seek(0)
        return name if isinstance(name, str) else None

    def _checked(self, target: Target) -> Target:
        if (
            target.subresource is not None
            and target.subresource not in target.resource.subresources
        ):
            raise StatusError(404, NOT_FOUND)
        if target.subresource in ("log", "proxy", "finalize"):
            raise StatusError(
                501, f"the {target.subresource} subresource is not available in this release"
            )
        return target

    def _verb(self, request: Request, target: Target) -> str:
        method = request.method
        if method in (b"GET", b"HEAD"):
            if target.name:
                return "get"
            return "watch" if _flag(request, "watch") else "list"
        verbs = {b"POST": "create", b"PUT": "update", b"PATCH": "patch", b"DELETE": "delete"}
        verb = verbs.get(method)
        if verb is None or (verb == "create") == bool(target.name):
            if verb == "delete" and not target.name:
                return "deletecollection"
            raise StatusError(
                405, "the server does not allow this method on the requested resource"
            )
        return verb

    # Verbs

    async def _serve(
        self, request: Request, verb: str, target: Target
    ) -> tuple[int, object] | None:
        resource, namespace, name = target.resource, target.namespace, target.name
        store = self._store_for(request)
        if verb == "get":
            assert name is not None
            obj = await self.store.get(resource, namespace, name)
            return 200, self._render_one(request, resource, obj)
        if verb == "list":
            predicate = self._predicate(request, resource)
            paging = (
                _limit(request),
                _param(request, "continue"),
                _param(request, "resourceVersion"),
                _param(request, "resourceVersionMatch") == "Exact",
            )
            if predicate is None and not wants_table(request):
                raws, version, token = await self.store.list_raw(resource, namespace, *paging)
                self._finish(request, _raw_list(request, resource, raws, version, token))
                return None
            listed = await self.store.list(resource, namespace, predicate, *paging)
            return 200, self._render_list(
                request, resource, listed.items, listed.resource_version, listed.continue_token
            )
        if verb == "watch":
            await self._watch(request, target)
            return None
        if verb == "create":
            obj = self._body(request)
            created = await store.create(
                resource, namespace, self._prepare_create(resource, obj), _manager(request)
            )
            self._after_write(store, resource, created)
            return 201, created
        if verb == "update":
            assert name is not None
            updated = await store.update(
                resource,
                namespace,
                name,
                self._body(request),
                target.subresource,
                _manager(request),
            )
            self._after_write(store, resource, updated)
            return 200, updated
        if verb == "patch":
            return await self._patch(request, target, store)
        if verb == "delete":
            return await self._delete(request, target, store)
        assert verb == "deletecollection"
        return await self._delete_collection(request, target, store)

    def _store_for(self, request: Request) -> ObjectStore:
        dry_run = _param(request, "dryRun")
        if dry_run not in ("", "All"):
            raise bad_request(f'Unsupported value: "{dry_run}": supported values: "All"')
        return self.dry_run_store if dry_run else self.store

    def _body(self, request: Request) -> Object:
        media = _media_type(request.getHeader(b"content-type"))
        if media == PROTOBUF and request.method == b"POST":
            raw = request.content.read() if request.content is not None else b""
            try:
                return protobuf.decode_body(raw)
            except protobuf.UnsupportedProtobuf as e:
                raise StatusError(
                    415,
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: application/json, application/yaml ({e})",
                ) from None
        if media not in JSON_TYPES and media not in PATCH_TYPES and media != "application/yaml":
            raise StatusError(
                415,
                "the body of the request was in an unknown format - accepted media types "
                "include: application/json, application/yaml",
            )
        raw = request.content.read() if request.content is not None else b""
        try:
            document = json.loads(raw) if media != "application/yaml" else _yaml(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise bad_request(f"the body of the request could not be decoded: {e}") from None
        if not isinstance(document, dict):
            raise bad_request("the body of the request must be a JSON object")
        return document

    def _prepare_create(self, resource: ResourceType, obj: Object) -> Object:
        if resource.kind == "CustomResourceDefinition" and resource.group == CRDS.group:
            finalizers = obj.setdefault("metadata", {}).setdefault("finalizers", [])
            if CLEANUP not in finalizers:
                finalizers.append(CLEANUP)
            spec = obj.get("spec") or {}
            names = spec.get("names") or {}
            obj["status"] = {
                "acceptedNames": names,
                "storedVersions": [v["name"] for v in spec.get("versions", []) if v.get("storage")],
                "conditions": [
                    {
                        "type": "NamesAccepted",
                        "status": "True",
                        "reason": "NoConflicts",
                        "message": "no conflicts found",
                        "lastTransitionTime": self.store.now(),
                    },
                    {
                        "type": "Established",
                        "status": "True",
                        "reason": "InitialNamesAccepted",
                        "message": "the initial names have been accepted",
                        "lastTransitionTime": self.store.now(),
                    },
                ],
            }
        return obj

    def _after_write(
        self, store: ObjectStore, resource: ResourceType, obj: Object, deleted: bool = False
    ) -> None:
        # Serve a new CRD's resources at once; CRDController follows deletions and other servers.
        if store.dry_run:
            return
        if resource.kind == "CustomResourceDefinition" and resource.group == CRDS.group:
            name = obj["metadata"]["name"]
            if deleted:
                self.registry.replace_crd(name, [])
            elif not obj["metadata"].get("deletionTimestamp"):
                self.registry.replace_crd(name, resources_of_crd(obj))

    async def _patch(
        self, request: Request, target: Target, store: ObjectStore
    ) -> tuple[int, object]:
        resource, namespace, name = target.resource, target.namespace, target.name
        assert name is not None
        media = _media_type(request.getHeader(b"content-type"))
        if media not in PATCH_TYPES:
            raise StatusError(
                415,
                "the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(PATCH_TYPES)}",
            )
        raw = request.content.read() if request.content is not None else b""
        try:
            body = json.loads(raw) if media != "application/apply-patch+yaml" else _yaml(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise bad_request(f"error decoding patch: {e}") from None
        if media == "application/apply-patch+yaml":
            return await self._apply(request, target, body, store)
        if body is None:
            raise bad_request("the patch is empty")

        def mutate(current: Object) -> Object:
            if media == "application/json-patch+json":
                patched = patching.apply_json_patch(current, body)
            elif media == "application/merge-patch+json":
                patched = patching.apply_merge_patch(current, body)
            else:
                patched = patching.apply_strategic_merge_patch(current, body, resource.kind)
            if not isinstance(patched, dict):
                raise bad_request("the patch did not produce an object")
            return merge_update(resource, current, patched, target.subresource)

        updated = await store.guaranteed_update(
            resource, namespace, name, mutate, _manager(request), target.subresource
        )
        self._after_write(store, resource, updated)
        return 200, updated

    async def _apply(
        self, request: Request, target: Target, body: Any, store: ObjectStore
    ) -> tuple[int, object]:
        """Server-side apply: create the object if it is missing, else merge into it."""
        resource, namespace, name = target.resource, target.namespace, target.name
        assert name is not None
        if not isinstance(body, dict):
            raise bad_request("the applied configuration must be an object")
        manager = _param(request, "fieldManager")
        if not manager:
            raise bad_request("PATCH requests with apply content type require fieldManager")
        if resource.has_status and target.subresource != "status":
            # As kube-apiserver: status in an applied configuration is ignored.
            body = {k: v for k, v in body.items() if k != "status"}
        force = _flag(request, "force")
        sub = target.subresource or ""
        now = self.store.now()
        try:
            current: Object | None = await self.store.get(resource, namespace, name)
        except StatusError as e:
            if e.code != 404:
                raise
            current = None
        if current is None:
            applied = patching.apply_server_side(
                None, body, manager, force, now=now, subresource=sub
            )
            applied.setdefault("metadata", {})["name"] = name
            created = await store.create(
                resource, namespace, self._prepare_create(resource, applied)
            )
            self._after_write(store, resource, created)
            return 201, created

        def merge(live: Object) -> Object:
            applied = patching.apply_server_side(
                live, body, manager, force, now=now, subresource=sub
            )
            return merge_update(resource, live, applied, target.subresource)

        updated = await store.guaranteed_update(resource, namespace, name, merge)
        self._after_write(store, resource, updated)
        return 200, updated

    async def _delete(
        self, request: Request, target: Target, store: ObjectStore
    ) -> tuple[int, object]:
        resource, namespace, name = target.resource, target.namespace, target.name
        assert name is not None
        options = self._delete_options(request)
        if options.get("dryRun"):
            # DELETE carries dryRun in its DeleteOptions body.
            if options["dryRun"] != ["All"]:
                raise bad_request(
                    f'Unsupported value: {options["dryRun"]!r}: supported values: "All"'
                )
            store = self.dry_run_store
        if resource.kind == "Namespace" and not resource.group:
            return 200, await self._terminate_namespace(name, store)
        policy = options.get("propagationPolicy") or (
            "Orphan" if options.get("orphanDependents") else "Background"
        )
        extra = {"Foreground": ["foregroundDeletion"], "Orphan": ["orphan"]}.get(policy, [])
        obj, gone = await store.delete(
            resource, namespace, name, options.get("preconditions"), extra
        )
        if not gone:
            return 200, obj
        self._after_write(store, resource, obj, deleted=True)
        details = {"name": name, "kind": resource.plural, "uid": obj["metadata"].get("uid")}
        if resource.group:
            details["group"] = resource.group
        return 200, {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }

    def _delete_options(self, request: Request) -> dict[str, Any]:
        media = _media_type(request.getHeader(b"content-type"))
        raw = request.content.read() if request.content is not None else b""
        if not raw.strip() or media not in JSON_TYPES:
            # kubectl drain sends protobuf DeleteOptions; deleting with defaults is right.
            options: dict[str, Any] = {}
        else:
            try:
                options = json.loads(raw)
            except ValueError as e:
                raise bad_request(f"the body of the request could not be decoded: {e}") from None
            if not isinstance(options, dict):
                raise bad_request("DeleteOptions must be an object")
        if given := _param(request, "propagationPolicy"):
            options["propagationPolicy"] = given
        policy = options.get("propagationPolicy")
        if policy and policy not in ("Orphan", "Background", "Foreground"):
            raise bad_request(
                f'Unsupported value: "{policy}": supported values: '
                '"Foreground", "Background", "Orphan"'
            )
        return options

    async def _terminate_namespace(self, name: str, store: ObjectStore) -> Object:
        self.store.forget_namespace(name)
        resource = self.registry.lookup("", "v1", "namespaces")
        assert resource is not None

        def mark(current: Object) -> Object:
            current["metadata"].setdefault("deletionTimestamp", self.store.now())
            current.setdefault("status", {})["phase"] = "Terminating"
            return current

        return await store.guaranteed_update(resource, None, name, mark, marks_deletion=True)

    async def _delete_collection(
        self, request: Request, target: Target, store: ObjectStore
    ) -> tuple[int, object]:
        listed = await self.store.list(
            target.resource, target.namespace, self._predicate(request, target.resource)
        )
        deleted = []
        for obj in listed.items:
            metadata = obj["metadata"]
            try:
                last, _ = await store.delete(
                    target.resource, metadata.get("namespace"), metadata["name"]
                )
            except StatusError as e:
                if e.code != 404:
                    raise
                continue
            deleted.append(last)
        return 200, _list_object(target.resource, deleted, listed.resource_version, "")

    # Selectors, rendering and watch

    def _predicate(self, request: Request, resource: ResourceType) -> Predicate | None:
        labels_text = _param(request, "labelSelector")
        fields_text = _param(request, "fieldSelector")
        if not labels_text and not fields_text:
            return None
        labels = selectors.parse_label_selector(labels_text) if labels_text else None
        fields = None
        if fields_text:
            field_tables = selectors.BUILTIN_FIELD_TABLES
            if resource.crd:
                custom = selectors.custom_resource_field_table(resource.namespaced)
                field_tables = {(resource.group, resource.kind): custom}
            fields = selectors.parse_field_selector(
                fields_text, resource.group, resource.kind, field_tables
            )

        def predicate(obj: Object) -> bool:
            if labels is not None and not labels.matches(obj["metadata"].get("labels") or {}):
                return False
            return fields is None or fields.matches(obj)

        return predicate

    def _render_one(self, request: Request, resource: ResourceType, obj: Object) -> object:
        if wants_table(request):
            return tables.render(
                resource,
                [obj],
                self.clock.seconds(),
                obj["metadata"]["resourceVersion"],
                "",
                _param(request, "includeObject"),
            )
        return obj

    def _render_list(
        self,
        request: Request,
        resource: ResourceType,
        items: list[Object],
        resource_version: str,
        continue_token: str,
    ) -> object:
        if wants_table(request):
            return tables.render(
                resource,
                items,
                self.clock.seconds(),
                resource_version,
                continue_token,
                _param(request, "includeObject"),
            )
        return _list_object(resource, items, resource_version, continue_token)

    async def _watch(self, request: Request, target: Target) -> None:
        table = wants_table(request)
        first = [True]

        def send(kind: str, obj: Object) -> None:
            if getattr(request, "_disconnected", False):
                return
            if table and kind != "ERROR":
                obj = tables.render_event(
                    target.resource, obj, self.clock.seconds(), with_columns=first[0]
                )
                first[0] = False
                request.write(_event_line(kind, obj))
            else:
                request.write(self._lines.line(kind, obj))

        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-cache, private")
        predicate = self._predicate(request, target.resource)
        if target.name:
            predicate = _named(target.name, predicate)
        try:
            watch = await self.store.watch(
                target.resource,
                target.namespace,
                _param(request, "resourceVersion"),
                predicate,
                send,
            )
        except StatusError as e:
            if e.code != 410:
                raise
            # Kubernetes answers an expired watch with 200 and one ERROR event.
            request.write(b"")
            send("ERROR", e.status())
            request.finish()
            return
        request.write(b"")  # headers now, before the first change
        request.registerProducer(watch, True)
        timer = self._watch_timer(request, watch)
        done = request.notifyFinish()
        done.addBoth(lambda _: _stop_watch(watch, timer))
        watch.ended.addCallbacks(
            lambda _: self._end_watch(request),
            lambda failure: self._watch_failed(request, send, failure),
        )

    def _watch_timer(self, request: Request, watch: IWatch) -> IDelayedCall:
        seconds = _param(request, "timeoutSeconds")
        try:
            timeout = float(seconds) if seconds else MIN_WATCH_SECONDS * (1 + random.random())
        except ValueError:
            timeout = MIN_WATCH_SECONDS
        return self.clock.callLater(max(timeout, 0), watch.cancel)

    def _end_watch(self, request: Request) -> None:
        if not getattr(request, "_disconnected", False) and not getattr(request, "finished", 0):
            request.unregisterProducer()
            request.finish()

    def _watch_failed(
        self, request: Request, send: Callable[[str, Object], None], failure: Failure
    ) -> None:
        if failure.check(Compacted, WatchOverflow):
            message = (
                "too old resource version"
                if failure.check(Compacted)
                else "the watch fell too far behind and was closed; list again"
            )
            send("ERROR", status(410, message))
        else:
            self._log.failure("watch ended", failure)
            send("ERROR", status(503, f"the watch ended: {failure.getErrorMessage()}"))
        self._end_watch(request)

    async def _pod_uses(self, node: str, namespace: str, kind: str, name: str) -> bool:
        """Whether a pod bound to C{node} is C{name} (kind pods) or references it."""
        pods = self.registry.lookup("", "v1", "pods")
        assert pods is not None
        if kind == "pods":
            try:
                pod = await self.store.get(pods, namespace, name)
            except StatusError:
                return False
            return bool(pod.get("spec", {}).get("nodeName") == node)
        listed = await self.store.list(
            pods, namespace, lambda p: p.get("spec", {}).get("nodeName") == node
        )
        return any(name in _references(pod, kind) for pod in listed.items)


def _references(pod: Object, kind: str) -> set[str]:
    """The names of the secrets or configmaps a pod uses."""
    spec = pod.get("spec") or {}
    key, ref_key, name_key = (
        ("secret", "secretKeyRef", "secretName")
        if kind == "secrets"
        else ("configMap", "configMapKeyRef", "name")
    )
    found: set[str] = set()
    for volume in spec.get("volumes") or []:
        if isinstance(volume.get(key), dict):
            found.add(volume[key].get(name_key, ""))
        for source in (volume.get("projected") or {}).get("sources") or []:
            if isinstance(source.get(key), dict):
                found.add(source[key].get("name", ""))
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get(ref_key)
            if ref:
                found.add(ref.get("name", ""))
        for env_from in container.get("envFrom") or []:
            ref = env_from.get(f"{key}Ref")
            if ref:
                found.add(ref.get("name", ""))
    if kind == "secrets":
        found.update(s.get("name", "") for s in spec.get("imagePullSecrets") or [])
    return found


def _event_line(kind: str, obj: object) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


class EventLines:
    """
    Encoded watch lines of recent events, so an event sent to many watchers
    is encoded once.  Keyed by the (shared, read-only) decoded object.
    """

    def __init__(self, size: int = FANOUT_CACHE) -> None:
        self.size = size
        self._lines: OrderedDict[tuple[str, int], tuple[object, bytes]] = OrderedDict()

    def line(self, kind: str, obj: object) -> bytes:
        key = (kind, id(obj))
        found = self._lines.get(key)
        # The object is kept with its line, so its id cannot be reused while cached.
        if found is not None and found[0] is obj:
            return found[1]
        encoded = _event_line(kind, obj)
        self._lines[key] = (obj, encoded)
        if len(self._lines) > self.size:
            self._lines.popitem(last=False)
        return encoded


def _stop_watch(watch: IWatch, timer: IDelayedCall) -> None:
    watch.cancel()
    if timer.active():
        timer.cancel()


def _named(name: str, predicate: Predicate | None) -> Predicate:
    """C{predicate}, narrowed to the object called C{name} (a watch of one object)."""

    def named(obj: Object) -> bool:
        return bool(obj["metadata"].get("name") == name) and (predicate is None or predicate(obj))

    return named


def _raw_list(
    request: Request, resource: ResourceType, raws: list[bytes], version: str, token: str
) -> bytes:
    """L{_list_object}'s JSON built around objects already in JSON (no re-encoding)."""
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-cache, private")
    head = _list_object(resource, [], version, token)
    prefix = json.dumps(head, separators=(",", ":")).encode()[: -len(b"[]}")]
    return prefix + b"[" + b",".join(raws) + b"]}"


def _list_object(
    resource: ResourceType, items: list[Object], resource_version: str, continue_token: str
) -> Object:
    metadata: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        metadata["continue"] = continue_token
    return {
        "kind": resource.kind + "List",
        "apiVersion": resource.group_version,
        "metadata": metadata,
        "items": items,
    }


def _limit(request: Request) -> int:
    text = _param(request, "limit")
    try:
        return max(int(text), 0) if text else 0
    except ValueError:
        raise bad_request(f'limit must be a number, not "{text}"') from None


def _found(document: object | None) -> tuple[int, object]:
    if document is None:
        raise StatusError(404, NOT_FOUND)
    return 200, document


def _yaml(raw: bytes) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw.decode("utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(str(e)) from None


def _as_status_error(error: SelectorError | TableOptionError | PatchError) -> StatusError:
    """The Status of an error the pure API modules raise; each carries its HTTP code."""
    return StatusError(
        getattr(error, "code", 400),
        getattr(error, "message", None) or str(error),
        getattr(error, "details", None),
        getattr(error, "reason", None),
    )


def _manager(request: Request) -> str:
    """The field manager of a write: ``fieldManager``, else the client program's name."""
    given = _param(request, "fieldManager")
    if given:
        return given
    agent = (request.getHeader(b"user-agent") or b"unknown").decode("latin-1")
    return agent.split("/")[0].strip() or "unknown"
