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


def write_over_problem(data_dir: Path | None, path: Path) -> str | None:
    """What writing `path` would do to `data_dir` (if the command reads one), or to the data dir
    `path` lies in (a node's other than the one read: `report --cloudtrail … --out node/root.key`),
    said after the path ("… would write over the data dir's own root.key (keytrail-data/root.key)");
    None when it touches none of their own files."""
    given = () if data_dir is None else (data_dir,)
    for folder in dict.fromkeys((*given, *_enclosing_data_dirs(path))):
        if (own := node_file(folder, path)) is not None:
            return f"would write {'inside' if own.endswith('/') else 'over'} the data dir's own {own} ({folder / own})"
    return None


def _enclosing_data_dirs(path: Path) -> list[Path]:
    """The folders above `path` that are a node's data dir: each holds an event log or a key store."""
    try:
        folders = path.resolve().parents
    except (OSError, RuntimeError):  # a loop of links: no write gets through it either
        return []
    return [folder for folder in folders if (folder / "audit" / "log").is_dir() or (folder / "keys.db").is_file()]
