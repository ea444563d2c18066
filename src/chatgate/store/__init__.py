"""The store: SQLAlchemy models, repositories, Alembic migrations and the write-behind queue."""

from chatgate.store.analytics import AnalyticsRepo
from chatgate.store.db import Store, database_url, migrate
from chatgate.store.repos import (
    AlreadyExists,
    ConversationRepo,
    ConversationRow,
    KeyRepo,
    KeyRow,
    MessageRepo,
    MessageRow,
    UserRepo,
    UserRow,
    key_digest,
)
from chatgate.store.writebehind import (
    AddMessage,
    CountRequest,
    RecordRequest,
    SetBrief,
    TouchKey,
    UpsertConversation,
    UpsertUser,
    WriteBehind,
    WriteOp,
)

__all__ = [
    "AddMessage",
    "AlreadyExists",
    "AnalyticsRepo",
    "ConversationRepo",
    "ConversationRow",
    "CountRequest",
    "KeyRepo",
    "KeyRow",
    "MessageRepo",
    "MessageRow",
    "RecordRequest",
    "SetBrief",
    "Store",
    "TouchKey",
    "UpsertConversation",
    "UpsertUser",
    "UserRepo",
    "UserRow",
    "WriteBehind",
    "WriteOp",
    "database_url",
    "key_digest",
    "migrate",
]
