"""Collections, documents, upload jobs and search: ``/api/v1/collections...`` and ``/api/v1/jobs/{id}``.

Thin: check the request, call ``rag/service.py``, answer JSON. A private collection of another user
is a 404, never a 403, wherever it is named (its jobs too); changing a readable collection one may not
change (an admin-managed one, another user's shared one) is a 403.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from chatgate.api.middleware import info
from chatgate.api.protocol import parse_object
from chatgate.api.responses import caller as identity_of
from chatgate.api.responses import json_response, no_route
from chatgate.api.upload_form import UploadForm
from chatgate.errors import BadRequest, Forbidden
from chatgate.rag.ground import source_json
from chatgate.rag.jobs import JobRow
from chatgate.rag.repo import CollectionRow, DocumentRow
from chatgate.rag.retrieve import MODES, SearchFilters
from chatgate.rag.service import Rag
from chatgate.settings import Settings
from chatgate.store.models import RAG_VISIBILITIES

MAX_FILES = 100


class Caller:
    def __init__(self, rag: Rag, user_id: str, admin: bool) -> None:
        self.rag, self.user_id, self.admin = rag, user_id, admin


def caller(request: Request) -> Caller:
    services = request.app.state.services
    if services.rag is None:
        raise no_route(request)
    principal = info(request.scope).principal
    assert principal is not None
    return Caller(services.rag, identity_of(request).user_id, "admin" in principal.scopes)


def _string(data: dict[str, Any], name: str, required: bool = False, limit: int = 255) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise BadRequest(
            f"'{name}' must be a non-empty string of at most {limit} characters.",
            details={"field": name, "expected": "string"},
        )
    return value.strip()


def collection_json(row: CollectionRow, description: str | None = None) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "collection",
        "name": row.name,
        "owner": row.owner_id,
        "visibility": row.visibility,
        "description": description,
        "embedding_model": row.embedding_model,
        "embedding_dim": row.embedding_dim,
        "created_at": row.created_at.isoformat(),
    }


def document_json(doc: DocumentRow) -> dict[str, Any]:
    return {
        "id": doc.id,
        "object": "document",
        "source": doc.source,
        "title": doc.title,
        "status": doc.status,
        "error": doc.error,
        "chunks": doc.chunk_count,
        "size_bytes": doc.size_bytes,
        "tags": list(doc.tags),
        "created_at": doc.created_at.isoformat(),
        "updated_at": doc.updated_at.isoformat(),
    }


def job_json(job: JobRow) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "ingestion.job",
        "collection_id": job.collection_id,
        "status": job.status,
        "files": list(job.files),
        "total": job.total,
        "added": job.added,
        "unchanged": job.unchanged,
        "updated": job.updated,
        "failed": job.failed,
        "failures": job.failures,
        "error": job.error,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


# ---- collections -------------------------------------------------------------------------------


async def create_collection(request: Request) -> Response:
    """``POST /api/v1/collections`` ``{name, visibility?, description?}``."""
    c = caller(request)
    data = parse_object(await request.body())
    name = _string(data, "name", required=True)
    assert name is not None
    visibility = data.get("visibility", "private")
    if visibility not in RAG_VISIBILITIES:
        raise BadRequest(
            f"'visibility' must be one of {', '.join(RAG_VISIBILITIES)}.",
            details={"field": "visibility", "expected": list(RAG_VISIBILITIES)},
        )
    if visibility == "admin" and not c.admin:
        raise Forbidden("Only an admin may create an admin-managed collection.", details={"field": "visibility"})
    description = _string(data, "description", limit=4000)
    row = await c.rag.create_collection(name, c.user_id, visibility, description)
    return json_response(collection_json(row, description), 201)


async def list_collections(request: Request) -> Response:
    """``GET /api/v1/collections``: those the caller may read."""
    c = caller(request)
    rows = await c.rag.repo.list_collections(c.user_id, c.admin)
    descriptions = await c.rag.descriptions([r.id for r in rows])
    return json_response({"object": "list", "data": [collection_json(r, descriptions.get(r.id)) for r in rows]})


async def get_collection(request: Request) -> Response:
    """``GET /api/v1/collections/{collection_id}``, with its documents counted by status."""
    c = caller(request)
    row = await c.rag.readable(request.path_params["collection_id"], c.user_id, c.admin)
    counts: dict[str, int] = {}
    for doc in await c.rag.documents(row):
        counts[doc.status] = counts.get(doc.status, 0) + 1
    description = (await c.rag.descriptions([row.id])).get(row.id)
    return json_response({**collection_json(row, description), "documents": counts})


async def delete_collection(request: Request) -> Response:
    """``DELETE /api/v1/collections/{collection_id}``: its owner or an admin."""
    c = caller(request)
    row = await c.rag.writable(request.path_params["collection_id"], c.user_id, c.admin)
    await c.rag.delete_collection(row)
    return json_response({"id": row.id, "deleted": True})


# ---- documents and jobs --------------------------------------------------------------------------


UPLOAD_PATH = "/api/v1/collections/{collection_id}/documents"


def upload_body_limit(settings: Settings) -> tuple[str, str, int]:
    """The upload route's own body limit, for ``BodyLimit`` (instead of ``server.max_body_bytes``)."""
    return ("POST", UPLOAD_PATH, settings.rag.retrieval.upload_max_request_bytes)


async def upload(request: Request) -> Response:
    """``POST /api/v1/collections/{collection_id}/documents``: multipart, one or more ``files`` (or ``file``)
    parts; 202 with the queued job. The body is read as it streams in, within ``upload_max_bytes`` per file
    and ``upload_max_request_bytes`` in all (413 as soon as one is passed)."""
    c = caller(request)
    row = await c.rag.writable(request.path_params["collection_id"], c.user_id, c.admin)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest("Upload the documents as multipart/form-data 'files' parts.", details={"field": "files"})
    limits = c.rag.retrieval
    form = UploadForm(("files", "file"), limits.upload_max_bytes, limits.upload_max_request_bytes, MAX_FILES)
    try:
        await form.read(request.headers, request.stream())
        if not form.files:
            raise BadRequest("No file in the upload: send one or more 'files' parts.", details={"field": "files"})
        job = await c.rag.upload(row, form.uploads())
    finally:
        await asyncio.to_thread(form.close)
    return json_response(
        {"job_id": job.id, "status": job.status, "collection_id": row.id, "files": list(job.files)}, 202
    )


async def get_job(request: Request) -> Response:
    """``GET /api/v1/jobs/{job_id}``: status, counts and per-file failures."""
    c = caller(request)
    return json_response(job_json(await c.rag.job_for(request.path_params["job_id"], c.user_id, c.admin)))


async def list_documents(request: Request) -> Response:
    """``GET /api/v1/collections/{collection_id}/documents``."""
    c = caller(request)
    row = await c.rag.readable(request.path_params["collection_id"], c.user_id, c.admin)
    return json_response({"object": "list", "data": [document_json(d) for d in await c.rag.documents(row)]})


async def delete_document(request: Request) -> Response:
    """``DELETE /api/v1/collections/{collection_id}/documents/{document_id}``."""
    c = caller(request)
    row = await c.rag.writable(request.path_params["collection_id"], c.user_id, c.admin)
    document_id = request.path_params["document_id"]
    await c.rag.delete_document(row, document_id)
    return json_response({"id": document_id, "deleted": True})


# ---- search --------------------------------------------------------------------------------------


def _filters(data: dict[str, Any]) -> SearchFilters | None:
    given = data.get("filters")
    if given is None:
        return None
    if not isinstance(given, dict):
        raise BadRequest("'filters' must be an object.", details={"field": "filters"})
    out: dict[str, frozenset[str] | None] = {"documents": None, "tags": None}
    for name in out:
        value = given.get(name)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRequest(f"'filters.{name}' must be an array of strings.", details={"field": f"filters.{name}"})
        out[name] = frozenset(value)
    return SearchFilters(document_ids=out["documents"], tags=out["tags"])


async def search(request: Request) -> Response:
    """``POST /api/v1/collections/{collection_id}/search`` ``{query, top_k?, mode?, filters?, threshold?}``."""
    c = caller(request)
    row = await c.rag.readable(request.path_params["collection_id"], c.user_id, c.admin)
    data = parse_object(await request.body())
    query = _string(data, "query", required=True, limit=10_000)
    assert query is not None
    top_k = data.get("top_k")
    if isinstance(top_k, float) and top_k.is_integer():  # JSON Schema's integer: 5.0 is 5
        top_k = int(top_k)
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 200):
        raise BadRequest("'top_k' must be an integer from 1 to 200.", details={"field": "top_k"})
    mode = data.get("mode")
    if mode is not None and mode not in MODES:
        raise BadRequest(f"'mode' must be one of {', '.join(MODES)}.", details={"field": "mode"})
    threshold = data.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
        raise BadRequest("'threshold' must be a number.", details={"field": "threshold"})
    hits, used = await c.rag.search([row], query, top_k, mode, _filters(data), threshold)
    return json_response(
        {
            "object": "list",
            "query": query,
            "mode": used,
            "data": [{**source_json(i + 1, h), "text": h.text} for i, h in enumerate(hits)],
        }
    )
