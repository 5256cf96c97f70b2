"""A plain HTTP GET for the endpoints the tests scrape (metrics, health): errors are answers too."""

from __future__ import annotations

import urllib.error
import urllib.request

__all__ = ["http_get"]


def http_get(url: str) -> tuple[int, str, str]:
    """The status, content type and body text of `url`, whatever its status."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["content-type"], error.read().decode()
