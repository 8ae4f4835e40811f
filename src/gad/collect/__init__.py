"""Black-box teacher collection: an OpenAI-compatible client, a durable answer cache and the `gad collect` run.

Public API (also used by the LLM judge and the demo):

- :class:`ChatClient`, :class:`ChatResult`, :class:`RequestFailed` — async chat requests with limits and retries;
- :class:`TeacherCache`, :class:`CacheEntry` — answers in SQLite, keyed by (model, messages, params, sample index);
- :class:`CollectConfig`, :func:`collect`, :class:`CollectSummary` — a resumable collection run.
"""

from gad.collect.cache import CacheEntry, TeacherCache
from gad.collect.client import ChatClient, ChatResult, RequestFailed
from gad.collect.collector import CollectConfig, CollectSummary, acollect, collect

__all__ = [
    "CacheEntry",
    "ChatClient",
    "ChatResult",
    "CollectConfig",
    "CollectSummary",
    "RequestFailed",
    "TeacherCache",
    "acollect",
    "collect",
]
