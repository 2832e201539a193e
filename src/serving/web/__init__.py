"""The operator page's static files (``/ui``): plain HTML, CSS and JavaScript in the package, no
CDN, no external font, no build step; the page works offline."""

from __future__ import annotations

from importlib import resources

CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
}


def assets() -> dict[str, tuple[bytes, bytes]]:
    """File name -> (bytes, content type), read once."""
    found = {}
    for item in resources.files(__package__).joinpath("static").iterdir():
        suffix = "." + item.name.rpartition(".")[2]
        if item.is_file() and suffix in CONTENT_TYPES:
            found[item.name] = (item.read_bytes(), CONTENT_TYPES[suffix])
    return found
