"""Static files over the handshake's HTTP: the demo web app at ``/ui/`` (DESIGN, Endpoints).

The web app is plain HTML, JavaScript and CSS with no build step. Its files ship as package
data of ``clients`` (``clients/web/``: the web UI is a client, DESIGN "Where things live");
the server reads them as data and never imports ``clients`` (:func:`default_web_dir` only
locates the package's folder). A file is read when it is asked for, so an edited page is
served on the next reload.

Only plain files directly in the folder are served, by a name of letters, digits, ``-``,
``_`` and ``.`` (no leading dot): ``/ui/../x`` or ``/ui/a/b`` is a 404, never a file
elsewhere on disk.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".wav": "audio/wav",
}
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def default_web_dir() -> Path | None:
    """``clients/web`` of the installed ``clients`` package, found without importing it;
    None when there is none."""
    spec = importlib.util.find_spec("clients")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "web"
    return folder if folder.is_dir() else None


class StaticFiles:
    """The files of one folder, by name: ``get("app.js") -> (body, content type)`` or None."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory).resolve()

    def get(self, name: str) -> tuple[bytes, str] | None:
        if not _NAME.fullmatch(name):
            return None
        path = self.directory / name
        content_type = CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file():
            return None
        try:
            return path.read_bytes(), content_type
        except OSError:
            return None
