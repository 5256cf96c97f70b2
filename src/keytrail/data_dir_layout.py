"""The names a data dir reserves for keytrail's own files and folders (docs/operations.md, "The data
directory"), so that a command writing where the user asks (`report --out`, `audit export OUT`) can
refuse to land on one of them: a report written over `root.key` loses every key's material at the
node's next start. A new file of another name, beside them, is the user's to write."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

__all__ = ["NODE_FILES", "NODE_FOLDERS", "node_file", "write_over_problem"]

# At the top of a data dir, as fnmatch patterns. `demo-report.html` is left out: it is a report,
# which writing another report over harms nothing.
NODE_FILES = ("principals.toml", "unannounced", "root.key", "keys.db", "keys.db-wal", "keys.db-shm", "keys.db-journal",
              "alarms.jsonl", "dev-clock.json", "detector.lock", "alarm-outbox-*.jsonl",
              "alarm-dead-letter-*.jsonl", "demo-server.log")
NODE_FOLDERS = ("audit", "metrics", "tls")
# A file replaced whole is first written to a hidden `.<name>.<pid>.tmp` beside it (owner_only.replace_whole).
_TEMPS = tuple(f".{name}.*.tmp" for name in NODE_FILES)


def node_file(data_dir: Path, path: Path) -> str | None:
    """Which of `data_dir`'s own files (`root.key`) or folders (`audit/`) `path` is or lies inside,
    symbolic links and `..` resolved, as a write would reach it; None for any other path, the data
    dir itself among them."""
    try:
        inside = path.resolve().relative_to(data_dir.resolve())
    except ValueError:  # elsewhere
        return None
    except (OSError, RuntimeError):  # a loop of links: no write gets through it either
        return None
    if not inside.parts:
        return None
    top = inside.parts[0]
    if top in NODE_FOLDERS:
        return f"{top}/"
    if any(fnmatchcase(top, pattern) for pattern in (*NODE_FILES, *_TEMPS)):
        return top
    return None


def write_over_problem(data_dir: Path, path: Path) -> str | None:
    """What writing `path` would do to `data_dir`, said after the path ("… would write over the
    data dir's own root.key (keytrail-data/root.key)"); None when it touches none of its own files."""
    own = node_file(data_dir, path)
    if own is None:
        return None
    return f"would write {'inside' if own.endswith('/') else 'over'} the data dir's own {own} ({data_dir / own})"
