"""What a start of `keytrail serve` made that no start has printed yet: the admin user of the
principals file it created, the audit signing key, the dev certificate of --tls-self-signed. A
start killed (kill -9, the machine off) between making them and printing them left them for the
next start to take as existing ones, and no start ever printed the admin's credentials, the key's
fingerprint or the certificate's AWS_CA_BUNDLE line. Noted durably in the data dir before they are
made, cleared once they are printed, the next start prints them."""

from __future__ import annotations

from pathlib import Path

from keytrail.owner_only import open_regular, remove_stale_temps, replace_whole, replace_whole_temps

__all__ = ["DEV_CERTIFICATE", "NAME", "PRINCIPALS", "SIGNING_KEY", "PendingAnnouncement"]

NAME = "unannounced"  # in the data dir
PRINCIPALS = "principals.toml"
SIGNING_KEY = "audit signing key"
DEV_CERTIFICATE = "dev certificate"  # unprinted, the https:// endpoint of the admin's line failed every call
_ITEMS = frozenset({PRINCIPALS, SIGNING_KEY, DEV_CERTIFICATE})


class PendingAnnouncement:
    """The data dir's note of what was made and not printed yet (no file: nothing)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / NAME

    def items(self) -> frozenset[str]:
        """What is noted. Read without waiting, a regular file only (NotRegularFile): read as it
        came, a FIFO in its place held serve's start for a writer forever, deaf to SIGTERM."""
        try:
            with open(open_regular(self.path), encoding="utf-8", errors="replace") as file:
                text = file.read(4096)  # two short lines: what is past them is none of keytrail's
        except FileNotFoundError:
            return frozenset()
        return frozenset(text.splitlines()) & _ITEMS

    def note(self, made: set[str]) -> frozenset[str]:
        """Note `made`, before it is made, beside what was noted already; all that is noted now."""
        # A start killed (kill -9, power loss) as it wrote the note left its temp file, named for its pid, for good.
        remove_stale_temps(self.path.parent, replace_whole_temps(self.path))
        noted = self.items()
        if not made <= noted:
            noted |= made
            self._write(noted)
        return noted

    def keep_only(self, items: set[str]) -> None:
        """What was printed is no longer pending: keep `items` noted, remove the note if none."""
        if items:
            self._write(items)
        else:
            self.path.unlink(missing_ok=True)

    def _write(self, items: set[str] | frozenset[str]) -> None:
        replace_whole(self.path, "".join(f"{item}\n" for item in sorted(items)).encode(), durable=True)
