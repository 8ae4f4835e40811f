"""User-facing errors: one line that says what is wrong and how to fix it."""


class GadError(Exception):
    """An error caused by the user's input (a file, a config value, a model path).

    The CLI prints it as one line (``error: ...``) and exits with status 2; no traceback unless ``--debug``.
    """


class DataError(GadError):
    """A data file is unreadable or one of its rows is malformed; the message names file, row and field.

    ``where`` is a human location inside the file such as ``"line 3"`` (JSONL, CSV) or ``"row 3"`` (Parquet).
    """

    def __init__(self, message: str, *, path: str | None = None, where: str | None = None, field: str | None = None):
        self.message, self.path, self.where, self.field = message, path, where, field
        super().__init__(self._format())

    def located(self, path: str) -> "DataError":
        """The same error with the file it came from."""
        return DataError(self.message, path=path, where=self.where, field=self.field)

    def _format(self) -> str:
        parts = [p for p in (self.path, self.where, self.field and f"field '{self.field}'") if p]
        return f"{', '.join(parts)}: {self.message}" if parts else self.message
