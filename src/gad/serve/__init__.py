"""A local OpenAI-compatible teacher: the server (:mod:`gad.serve.server`, ``gad serve-teacher``) and
:class:`TeacherServer`, which runs it as a child process for tests, benchmarks and the demo."""

from gad.serve.process import TeacherServer, free_port
from gad.serve.server import merge_system, serve_teacher

__all__ = ["TeacherServer", "free_port", "merge_system", "serve_teacher"]
