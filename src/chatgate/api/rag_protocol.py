"""Wire formats of the collections, search and assistants routes, for the OpenAPI document only
(the routes check their bodies themselves, naming the field that is wrong)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from chatgate.api.protocol import NOT_BLANK


class CollectionCreate(BaseModel):
    name: str = Field(min_length=1, max_length=255, pattern=NOT_BLANK, description="Unique per owner (not blank).")
    visibility: Literal["private", "shared", "admin"] = Field(
        "private",
        description="`private`: the owner only; `shared`: every user reads it; `admin`: admins only write it.",
    )
    description: str | None = Field(None, min_length=1, max_length=4000, pattern=NOT_BLANK)


class Collection(BaseModel):
    id: str
    object: Literal["collection"] = "collection"
    name: str
    owner: str
    visibility: str
    description: str | None = None
    embedding_model: str
    embedding_dim: int
    created_at: str


class UploadAccepted(BaseModel):
    job_id: str
    status: Literal["queued"] = "queued"
    collection_id: str
    files: list[str]


class Job(BaseModel):
    id: str
    status: Literal["queued", "processing", "done", "failed"]
    total: int
    added: int
    unchanged: int
    updated: int
    failed: int
    failures: dict[str, str] = Field(description="File name -> why it was not indexed.")
    error: str | None = None


class SearchFilters(BaseModel):
    documents: list[str] | None = Field(None, description="Document ids.")
    tags: list[str] | None = Field(None, description="Documents carrying at least one of these tags.")


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=10_000, pattern=NOT_BLANK)
    top_k: int | None = Field(None, ge=1, le=200)
    mode: Literal["hybrid", "dense", "lexical"] | None = None
    filters: SearchFilters | None = None
    threshold: float | None = None


class Source(BaseModel):
    """A citation: ``[index]`` in the answer's text."""

    index: int
    document: str = Field(description="The document's source name (file name or path).")
    document_id: str
    collection_id: str
    title: str
    chunk_id: int
    page: int | None = None
    headings: list[str] = []
    score: float


class SearchHit(Source):
    text: str


class SearchResult(BaseModel):
    object: Literal["list"] = "list"
    query: str
    mode: str
    data: list[SearchHit]


class AssistantDefinition(BaseModel):
    name: str
    model: str
    system_prompt: str | None = None
    collections: list[str] = []
    retrieval: Literal["every_turn", "once_per_conversation", "tool", "off"] = "every_turn"
    top_k: int | None = None
    mode: Literal["hybrid", "dense", "lexical"] | None = None
    research: bool = False
    description: str | None = None
    tools: list[str] = Field([], description="Server tools offered besides `search_documents` (`retrieval: tool`).")
    max_steps: int | None = Field(None, description="Tool-loop steps; unset: `tools.max_steps`.")
    source: Literal["config", "api"] | None = Field(None, description="In answers: where it is defined.")
