"""The OpenAI-compatible chat client and the SQLite answer cache, shared by `gad collect` and the LLM judge."""

from gad.api.cache import CacheEntry, TeacherCache
from gad.api.client import ChatClient, ChatResult, RequestFailed

__all__ = ["CacheEntry", "ChatClient", "ChatResult", "RequestFailed", "TeacherCache"]
