"""Black-box teacher collection: the `gad collect` run over the client and cache of :mod:`gad.api`.

Public API (also used by the LLM judge and the demo):

- :class:`ChatClient`, :class:`ChatResult`, :class:`RequestFailed` — async chat requests with limits and retries;
- :class:`TeacherCache`, :class:`CacheEntry` — answers in SQLite, keyed by (model, messages, params, sample index);
- :class:`CollectConfig`, :func:`collect`, :class:`CollectSummary` — a resumable collection run.
"""

from gad.api import CacheEntry, ChatClient, ChatResult, RequestFailed, TeacherCache
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
