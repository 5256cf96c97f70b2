"""Passwords given on a command line, hidden from `ps` once the command has read them.

A process's command line is readable by every user of the machine (`ps`, /proc/<pid>/cmdline),
for serve too, which is not dumpable. `serve --store postgresql://USER:PASS@…` and `--mqtt
mqtt://USER:PASS@…` are warned of (a file or the environment keeps a password off it), but a
node started so showed its password for as long as it ran. Like `mysql -pPASS`, the command
overwrites each password with `*` in its own argument memory, which is what the kernel shows,
once it has read it: `ps` then shows `postgresql://USER:****@…`. It was readable from the start
until then (and stays in the shell's history), which is why the warning stays.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from keytrail.cli.console import url_secrets

__all__ = ["hide_url_passwords"]

log = logging.getLogger("keytrail")

# /proc/<pid>/stat after the command name's closing parenthesis: field 3 (state) is the first, so
# field n is at n - 3. Fields 48 and 49 are where the kernel's copy of the arguments starts and ends.
_ARG_START, _ARG_END = 48 - 3, 49 - 3


def hide_url_passwords(urls: Iterable[str | None]) -> bool:
    """Overwrite with `*`s each password of each of `urls` (its own, and the values of its
    `password=` and `sslpassword=` parameters: console.url_secrets) in the arguments of this
    process's command line that hold that URL; False (and the command line as it was) where the
    system does not allow it (not Linux, /proc not mounted, a kernel refusing writes to /proc/self/mem)."""
    starred = {url.encode(): _starred(url).encode() for url in urls if url and url_secrets(url)}
    if not starred:
        return True
    try:
        fields = Path("/proc/self/stat").read_bytes().rsplit(b")", 1)[1].split()
        start, end = int(fields[_ARG_START]), int(fields[_ARG_END])
        with open("/proc/self/mem", "r+b", buffering=0) as memory:
            memory.seek(start)
            arguments = memory.read(end - start)
            hidden = arguments
            for url, stars in starred.items():
                hidden = hidden.replace(url, stars)
            if hidden != arguments:
                memory.seek(start)
                memory.write(hidden)
    except (OSError, ValueError, IndexError) as exc:
        log.warning("the password on the command line stays readable there (`ps`) while this runs: %s", exc)
        return False
    return True


def _starred(url: str) -> str:
    """`url` with its password and its `password=`/`sslpassword=` values each replaced by as many
    `*`: the same length, so every argument stays where the kernel's bounds put it."""
    parts = urlsplit(url)
    head = f"{parts.scheme}://" if url.startswith(f"{parts.scheme}://") else ""
    userinfo, at, _ = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if at and colon and password:
        offset = len(head) + len(user) + 1
        url = url[:offset] + "*" * len(password) + url[offset + len(password) :]
    base, mark, rest = url.partition("?")
    query, hash_mark, fragment = rest.partition("#")
    secrets = set(url_secrets(url))
    pairs = [
        name + equals + ("*" * len(value) if value in secrets else value)
        for name, equals, value in (pair.partition("=") for pair in query.split("&"))
    ]
    return base + mark + "&".join(pairs) + hash_mark + fragment
