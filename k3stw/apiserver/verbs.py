"""
The verbs of the Kubernetes API over the object store: get, list (JSON or a
Table), create, update, the four kinds of patch, delete with propagation, and
deletecollection.  Each answers a request already routed and authorized; what
a kind adds (defaults, validation, merge rules, printing) comes from its
strategy, and from the store, which follows it on every write.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from k3stw.apiserver import patch as patching
from k3stw.apiserver import tables
from k3stw.apiserver.binding import bind
from k3stw.apiserver.catalogue.types import (
    SchemaErrors,
    decoder_errors,
    json_type,
    schema_errors,
)
from k3stw.apiserver.dryrun import DryRunDatastore
from k3stw.apiserver.eviction import evict
from k3stw.apiserver.fields import selection
from k3stw.apiserver.finalize import finalize
from k3stw.apiserver.registry import ResourceType
from k3stw.apiserver.request import (
    APPLY_PATCH,
    answer,
    delete_options,
    field_manager,
    flag,
    limit,
    object_body,
    param,
    patch_body,
    request_duplicates,
    wants_table,
)
from k3stw.apiserver.scale import patched_scale, scale_of, write_scale
from k3stw.apiserver.status import NOT_ALLOWED, StatusError, bad_request, invalid, send_encoded
from k3stw.apiserver.storage import Admit, ObjectStore, Predicate, merge_update
from k3stw.apiserver.watch import WatchStreams, named
from k3stw.machinery.objects import Object
from k3stw.web import finish

#: What a deletion's propagation policy adds to the object's finalizers.
_PROPAGATION_FINALIZERS = {"Foreground": ["foregroundDeletion"], "Orphan": ["orphan"]}


@dataclass(frozen=True)
class Target:
    """Which objects a resource path names."""

    resource: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


FIELD_VALIDATION = ("Ignore", "Warn", "Strict")
#: kube-apiserver names at most this many unknown fields in one error.
MAX_REPORTED_FIELDS = 100


def check_fields(
    request: Request,
    resource: ResourceType,
    obj: Object,
    before: Object | None = None,
    partial: bool = False,
) -> None:
    """
    What kube-apiserver's decoder checks of a body against the kind's schema,
    in its order:

    - a value of the wrong JSON type refuses the request (422), and one the
      decoder cannot parse (a quantity, a time) too (400), whatever
      ``fieldValidation`` says;
    - fields the schema does not declare are dropped, and fields the body
      names twice keep their last value, with a warning
      (``fieldValidation=Warn``, the default), silently (``Ignore``), or
      refuse the request (``Strict``);
    - a field the schema requires is missing (422).

    :param before: the stored object a patch applies to: what it already
        holds (stored before this server checked) passes.
    :param partial: C{obj} is part of an object (an applied configuration):
        its required fields are asked of the whole (L{check_required}).
    """
    mode = param(request, "fieldValidation") or "Warn"
    if mode not in FIELD_VALIDATION:
        raise bad_request(
            f'fieldValidation: Unsupported value: "{mode}": supported values: '
            '"Ignore", "Warn", "Strict"'
        )
    cannot = (
        f'{resource.kind} in version "{resource.version}" cannot be handled as a {resource.kind}'
    )
    if resource.crd:
        # A custom resource's schema is checked by its strategy; what it does not declare
        # is pruned there, and reported here as kube's decoder reports it.
        undeclared = resource.strategy.unknown_fields or (lambda obj: [])
        held_fields = set() if before is None else set(undeclared(before))
        unknown = [path for path in undeclared(obj) if path not in held_fields]
        _report_unknown(request, mode, cannot, unknown)
        return
    kind = (resource.group, resource.version, resource.kind)
    found = decoder_errors(*kind, obj, prune=True)
    # What the stored object already held passes: looked for only when the body has any.
    held = (
        decoder_errors(*kind, before)
        if before is not None and (found or found.unknown)
        else SchemaErrors()
    )
    name = str((obj.get("metadata") or {}).get("name") or "")
    old = {path for path, _, _ in held.wrong_types}
    wrong = [w for w in found.wrong_types if w[0] not in old][:MAX_REPORTED_FIELDS]
    if wrong:
        causes = []
        for path, wanted, value in wrong:
            given = json_type(value)
            message = (
                f'Invalid value: "{given}": {path} in body must be of type {wanted}: "{given}"'
            )
            causes.append((path, message))
        raise invalid(resource.kind, name, causes, resource.group)
    old = {path for path, _ in held.bad_formats}
    for path, message in found.bad_formats:
        if path not in old:
            raise bad_request(f"{cannot}: {message}")
    held_fields = set(held.unknown)
    _report_unknown(
        request, mode, cannot, [path for path in found.unknown if path not in held_fields]
    )
    if not partial:
        _refuse_missing(resource, name, found, held)


def _report_unknown(request: Request, mode: str, cannot: str, unknown: list[str]) -> None:
    """Unknown and duplicate fields, as ``fieldValidation`` says: refused, warned of, or not."""
    strict = [f'duplicate field "{path}"' for path in request_duplicates(request)]
    strict = (strict + [f'unknown field "{path}"' for path in unknown])[:MAX_REPORTED_FIELDS]
    if strict and mode == "Strict":
        raise bad_request(f"{cannot}: strict decoding error: {', '.join(strict)}")
    if strict and mode == "Warn":
        for warning in strict:
            escaped = warning.replace('"', '\\"')
            request.responseHeaders.addRawHeader(b"warning", f'299 - "{escaped}"'.encode())


def check_required(resource: ResourceType, obj: Object, before: Object | None = None) -> None:
    """Refuse (422) an object missing a field its schema requires, unless C{before} missed it."""
    if resource.crd:
        return
    kind = (resource.group, resource.version, resource.kind)
    found = schema_errors(*kind, obj)
    held = schema_errors(*kind, before) if before is not None and found else SchemaErrors()
    _refuse_missing(resource, str((obj.get("metadata") or {}).get("name") or ""), found, held)


def _refuse_missing(
    resource: ResourceType, name: str, found: SchemaErrors, held: SchemaErrors
) -> None:
    old = {path for path, _ in held.missing}
    missing = [(path, detail) for path, detail in found.missing if path not in old]
    if missing:
        causes = [
            (path, f"Required value: {detail}" if detail else "Required value")
            for path, detail in missing[:MAX_REPORTED_FIELDS]
        ]
        raise invalid(resource.kind, name, causes, resource.group)


def predicate(request: Request, resource: ResourceType) -> Predicate | None:
    """What the request's ``labelSelector`` and ``fieldSelector`` select."""
    return selection(
        param(request, "labelSelector"),
        param(request, "fieldSelector"),
        resource.strategy.fields,
    )


#: Subresources a client creates with a POST to the object (``pods/<name>/binding``,
#: ``pods/<name>/eviction``, ``serviceaccounts/<name>/token``).
POSTED_SUBRESOURCES = ("binding", "eviction", "token")

#: Answers a TokenRequest: (store, namespace, service account, body) -> the answered request.
TokenRequests = Callable[[ObjectStore, str, str, Any], Awaitable[Object]]


class Verbs:
    """
    The API's verbs over C{store}; ``dryRun=All`` runs the same verbs over a
    view of the datastore that never writes.
    """

    def __init__(
        self,
        store: ObjectStore,
        clock: IReactorTime,
        watch_event_sent: Callable[[ResourceType], None] = lambda resource: None,
        budgets: ResourceType | None = None,
        token_requests: TokenRequests | None = None,
    ) -> None:
        """
        :param budgets: PodDisruptionBudgets, which evictions respect.
        :param token_requests: answers ``serviceaccounts/<name>/token``.
        """
        self.store = store
        self.clock = clock
        self.budgets = budgets
        self.token_requests = token_requests
        self.dry_run_store = ObjectStore(
            DryRunDatastore(store.datastore), clock, dry_run=True, checks=store.checks
        )
        # A dry run is admitted as the write would be (its quota charge is not written).
        self.dry_run_store.admission = store.admission
        self.watches = WatchStreams(store, clock, watch_event_sent)

    async def serve(
        self, request: Request, verb: str, target: Target, admit: Admit | None = None
    ) -> None:
        """
        Answer C{request} with C{verb} on C{target}.

        :param admit: checks what a create, update or patch would store.
        """
        if target.subresource == "scale":
            await self.scale(request, verb, target)
        elif target.subresource == "eviction":
            assert target.name is not None and target.namespace is not None
            assert self.budgets is not None
            store = self._store_for(request)
            body = object_body(request)
            evicted = await evict(store, self.budgets, target.namespace, target.name, body)
            answer(request, 201, evicted)
        elif target.subresource == "finalize":
            assert target.name is not None
            if verb != "update":
                raise StatusError(405, NOT_ALLOWED)
            store = self._store_for(request)
            body = object_body(request)
            finalized = await finalize(store, target.name, body, field_manager(request))
            answer(request, 200, finalized)
        elif target.subresource == "binding":
            assert target.name is not None and target.namespace is not None
            store = self._store_for(request)
            bound = await bind(store, target.namespace, target.name, object_body(request))
            answer(request, 201, bound)
        elif target.subresource == "token":
            assert target.name is not None and target.namespace is not None
            if self.token_requests is None:
                raise StatusError(501, "the token subresource is not available in this release")
            body = object_body(request)
            issued = await self.token_requests(self.store, target.namespace, target.name, body)
            answer(request, 201, issued)
        elif verb == "get":
            await self.get(request, target)
        elif verb == "list":
            await self.list_objects(request, target)
        elif verb == "watch":
            selected = predicate(request, target.resource)
            if target.name:
                selected = named(target.name, selected)
            await self.watches.serve(request, target.resource, target.namespace, selected)
        elif verb == "create":
            await self.create(request, target, admit)
        elif verb == "update":
            await self.update(request, target, admit)
        elif verb == "patch":
            await self.patch(request, target, admit)
        elif verb == "delete":
            await self.delete(request, target)
        else:
            assert verb == "deletecollection"
            await self.delete_collection(request, target)

    async def scale(self, request: Request, verb: str, target: Target) -> None:
        """``<object>/scale``: its replicas as an ``autoscaling/v1`` Scale."""
        resource, namespace, name = target.resource, target.namespace, target.name
        assert name is not None
        if verb == "get":
            answer(request, 200, scale_of(await self.store.get(resource, namespace, name)))
            return
        if verb == "update":
            change: Any = object_body(request)
        elif verb == "patch":
            change = patched_scale(*patch_body(request))
        else:
            raise StatusError(405, NOT_ALLOWED)
        store = self._store_for(request)
        scaled = await write_scale(store, resource, namespace, name, change, field_manager(request))
        answer(request, 200, scaled)

    def _check_fields(
        self,
        request: Request,
        resource: ResourceType,
        obj: Object,
        before: Object | None = None,
        partial: bool = False,
    ) -> None:
        """L{check_fields}, unless the store's checks are off (``--unchecked-api``)."""
        if self.store.checks:
            check_fields(request, resource, obj, before, partial)

    def _check_required(
        self, resource: ResourceType, obj: Object, before: Object | None = None
    ) -> None:
        """L{check_required}, unless the store's checks are off (``--unchecked-api``)."""
        if self.store.checks:
            check_required(resource, obj, before)

    def _store_for(self, request: Request) -> ObjectStore:
        dry_run = param(request, "dryRun")
        if dry_run not in ("", "All"):
            raise bad_request(f'Unsupported value: "{dry_run}": supported values: "All"')
        return self.dry_run_store if dry_run else self.store

    # Reading

    async def get(self, request: Request, target: Target) -> None:
        assert target.name is not None
        obj = await self.store.get(target.resource, target.namespace, target.name)
        if wants_table(request):
            version = obj["metadata"]["resourceVersion"]
            answer(request, 200, self._table(request, target.resource, [obj], version, ""))
        else:
            answer(request, 200, obj)

    async def list_objects(self, request: Request, target: Target) -> None:
        resource, namespace = target.resource, target.namespace
        selected = predicate(request, resource)
        paging = (
            limit(request),
            param(request, "continue"),
            param(request, "resourceVersion"),
            param(request, "resourceVersionMatch") == "Exact",
        )
        if selected is None and not wants_table(request):
            raws, version, token = await self.store.list_raw(resource, namespace, *paging)
            finish(request, _raw_list(request, resource, raws, version, token))
            return
        listed = await self.store.list(resource, namespace, selected, *paging)
        version, token = listed.resource_version, listed.continue_token
        if wants_table(request):
            answer(request, 200, self._table(request, resource, listed.items, version, token))
        else:
            answer(request, 200, list_object(resource, listed.items, version, token))

    def _table(
        self,
        request: Request,
        resource: ResourceType,
        items: list[Object],
        version: str,
        token: str,
    ) -> Object:
        return tables.table(
            resource.strategy.printer,
            items,
            self.clock.seconds(),
            version,
            token,
            param(request, "includeObject"),
        )

    # Writing

    async def create(self, request: Request, target: Target, admit: Admit | None = None) -> None:
        store = self._store_for(request)
        obj = object_body(request)
        self._check_fields(request, target.resource, obj)
        _, created = await store.create_json(
            target.resource, target.namespace, obj, field_manager(request), admit
        )
        finish(request, send_encoded(request, 201, created))

    async def update(self, request: Request, target: Target, admit: Admit | None = None) -> None:
        assert target.name is not None
        store = self._store_for(request)
        obj = object_body(request)
        self._check_fields(request, target.resource, obj)
        updated = await store.update(
            target.resource,
            target.namespace,
            target.name,
            obj,
            target.subresource,
            field_manager(request),
            admit,
        )
        answer(request, 200, updated)

    async def patch(self, request: Request, target: Target, admit: Admit | None = None) -> None:
        resource, namespace, name = target.resource, target.namespace, target.name
        assert name is not None
        store = self._store_for(request)
        media, body = patch_body(request)
        if media == APPLY_PATCH:
            await self.apply(request, target, body, store, admit)
            return
        strategy = resource.strategy

        def mutate(current: Object) -> Object:
            if media == "application/json-patch+json":
                patched = patching.apply_json_patch(current, body)
            elif media == "application/merge-patch+json":
                patched = patching.apply_merge_patch(current, body)
            elif not strategy.strategic_merge:
                raise patching.UnsupportedPatchType()
            else:
                patched = patching.apply_strategic_merge_patch(current, body, strategy.merge_rules)
            if not isinstance(patched, dict):
                raise bad_request("the patch did not produce an object")
            # What the patch added: fields stored before this server checked them pass.
            self._check_fields(request, resource, patched, before=current)
            return merge_update(resource, current, patched, target.subresource)

        updated = await store.guaranteed_update(
            resource,
            namespace,
            name,
            mutate,
            field_manager(request),
            target.subresource,
            admit=admit,
        )
        answer(request, 200, updated)

    async def apply(
        self,
        request: Request,
        target: Target,
        body: Any,
        store: ObjectStore,
        admit: Admit | None = None,
    ) -> None:
        """Server-side apply: create the object if it is missing, else merge into it."""
        resource, namespace, name = target.resource, target.namespace, target.name
        assert name is not None
        if not isinstance(body, dict):
            raise bad_request("the applied configuration must be an object")
        manager = param(request, "fieldManager")
        if not manager:
            raise bad_request("PATCH requests with apply content type require fieldManager")
        if resource.has_status and target.subresource != "status":
            # As kube-apiserver: status in an applied configuration is ignored.
            body = {k: v for k, v in body.items() if k != "status"}
        self._check_fields(request, resource, body, partial=True)
        force = flag(request, "force")
        sub = target.subresource or ""
        now = self.store.now()
        rules = resource.strategy.merge_rules
        try:
            current: Object | None = await self.store.get(resource, namespace, name)
        except StatusError as e:
            if e.code != 404:
                raise
            current = None
        if current is None:
            applied = patching.apply_server_side(
                None, body, manager, force, now=now, subresource=sub, rules=rules
            )
            applied.setdefault("metadata", {})["name"] = name
            self._check_required(resource, applied)
            answer(request, 201, await store.create(resource, namespace, applied, admit=admit))
            return

        def merge(live: Object) -> Object:
            applied = patching.apply_server_side(
                live, body, manager, force, now=now, subresource=sub, rules=rules
            )
            self._check_required(resource, applied, before=live)
            return merge_update(resource, live, applied, target.subresource)

        updated = await store.guaranteed_update(resource, namespace, name, merge, admit=admit)
        answer(request, 200, updated)

    # Deleting

    async def delete(self, request: Request, target: Target) -> None:
        resource, namespace, name = target.resource, target.namespace, target.name
        assert name is not None
        options = delete_options(request)
        store = self._store_for(request)
        if options.get("dryRun"):
            # DELETE carries dryRun in its DeleteOptions body.
            if options["dryRun"] != ["All"]:
                raise bad_request(
                    f'Unsupported value: {options["dryRun"]!r}: supported values: "All"'
                )
            store = self.dry_run_store
        terminate = resource.strategy.terminate
        if terminate is not None:
            now = self.store.now()
            self.store.forget_namespace(name)
            marked = await store.guaranteed_update(
                resource,
                namespace,
                name,
                lambda current: terminate(current, now),
                marks_deletion=True,
            )
            answer(request, 200, marked)
            return
        policy = options.get("propagationPolicy") or (
            "Orphan" if options.get("orphanDependents") else "Background"
        )
        obj, gone = await store.delete(
            resource,
            namespace,
            name,
            options.get("preconditions"),
            _PROPAGATION_FINALIZERS.get(policy, []),
            options.get("gracePeriodSeconds"),
        )
        if not gone or resource.strategy.returns_deleted_object:
            # kube-apiserver's one 202: a deletion left pending that asked to cascade the
            # old way (orphanDependents: false).
            accepted = not gone and options.get("orphanDependents") is False
            answer(request, 202 if accepted else 200, obj)
            return
        details = {"name": name, "kind": resource.plural, "uid": obj["metadata"].get("uid")}
        if resource.group:
            details["group"] = resource.group
        answer(
            request,
            200,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            },
        )

    async def delete_collection(self, request: Request, target: Target) -> None:
        store = self._store_for(request)
        resource = target.resource
        listed = await self.store.list(resource, target.namespace, predicate(request, resource))
        grace = delete_options(request).get("gracePeriodSeconds")
        deleted = []
        for obj in listed.items:
            metadata = obj["metadata"]
            try:
                last, _ = await store.delete(
                    resource, metadata.get("namespace"), metadata["name"], grace_period=grace
                )
            except StatusError as e:
                if e.code != 404:
                    raise
                continue
            deleted.append(last)
        answer(request, 200, list_object(resource, deleted, listed.resource_version, ""))


def list_object(
    resource: ResourceType, items: list[Object], resource_version: str, continue_token: str
) -> Object:
    """A ``<Kind>List`` of C{items}."""
    metadata: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        metadata["continue"] = continue_token
    return {
        "kind": resource.kind + "List",
        "apiVersion": resource.group_version,
        "metadata": metadata,
        "items": items,
    }


def _raw_list(
    request: Request, resource: ResourceType, raws: list[bytes], version: str, token: str
) -> bytes:
    """L{list_object}'s JSON built around objects already in JSON (no re-encoding)."""
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-cache, private")
    head = list_object(resource, [], version, token)
    prefix = json.dumps(head, separators=(",", ":")).encode()[: -len(b"[]}")]
    return prefix + b"[" + b",".join(raws) + b"]}"
