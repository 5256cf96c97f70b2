"""A SoftHSM2 session that fails the PKCS#11 calls a test names, once each: the token's transient
failures (out of memory, a general error, a session it dropped), which SoftHSM2 itself never gives
on demand. Every call it does not fail goes to the real token."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from keytrail.kms import hsm_login, hsm_session

__all__ = ["Faults", "flaky_logins"]


class Faults:
    """The failures to give: the next call of a PKCS#11 function raises its error, once."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[Exception, bool]] = {}
        self.sessions: list[Any] = []  # the real sessions logged in, oldest first
        self.logins = 0  # logins tried
        self.hold = threading.Event()  # set to let a held call go on (`hang`)
        self.holding = threading.Event()  # set once a call `hang` named is held, inside the token
        self._hanging: set[str] = set()

    def fail(self, function: str, error: Exception, *, closing: bool = False) -> None:
        """The next `function` (C_Login, C_Logout, C_Encrypt, C_Decrypt, C_DeriveKey, C_SetAttributeValue,
        C_GenerateKey, C_GenerateRandom, C_FindObjects) raises `error`; `closing`: the token also closed the session.
        A failed C_Login opens no session; a failed C_Logout is the token's refusal of the real call."""
        self._pending[function] = (error, closing)

    def hang(self, function: str) -> None:
        """The next `function` waits until `hold` is set, as an HSM that stops answering."""
        self._hanging.add(function)

    def check(self, function: str) -> None:
        if function in self._hanging:
            self._hanging.discard(function)
            self.holding.set()
            self.hold.wait(timeout=30)
        failure = self._pending.pop(function, None)
        if failure is not None:
            error, closing = failure
            if closing:
                self.sessions[-1].close()
            raise error


class _FlakyKey:
    def __init__(self, key: Any, faults: Faults) -> None:
        self._key, self._faults = key, faults

    def encrypt(self, *args: Any, **kwargs: Any) -> Any:
        self._faults.check("C_Encrypt")
        return self._key.encrypt(*args, **kwargs)

    def decrypt(self, *args: Any, **kwargs: Any) -> Any:
        self._faults.check("C_Decrypt")
        return self._key.decrypt(*args, **kwargs)

    def derive_key(self, *args: Any, **kwargs: Any) -> _FlakyKey:
        self._faults.check("C_DeriveKey")
        return _FlakyKey(self._key.derive_key(*args, **kwargs), self._faults)

    def destroy(self) -> None:
        self._key.destroy()

    def __getitem__(self, attribute: Any) -> Any:
        return self._key[attribute]

    def get_attributes(self, attributes: list[Any]) -> dict[Any, Any]:
        return self._key.get_attributes(attributes)

    def __setitem__(self, attribute: Any, value: Any) -> None:
        self._faults.check("C_SetAttributeValue")
        self._key[attribute] = value


class _FlakySession:
    def __init__(self, session: Any, faults: Faults) -> None:
        self._session, self._faults = session, faults

    def get_key(self, **kwargs: Any) -> _FlakyKey:
        self._faults.check("C_FindObjects")
        return _FlakyKey(self._session.get_key(**kwargs), self._faults)

    def generate_key(self, *args: Any, **kwargs: Any) -> Any:
        self._faults.check("C_GenerateKey")
        return self._session.generate_key(*args, **kwargs)

    def generate_random(self, bits: int) -> Any:
        self._faults.check("C_GenerateRandom")
        return self._session.generate_random(bits)

    @property
    def handle(self) -> int:
        return int(self._session.handle)

    def close(self) -> None:
        self._session.close()


def flaky_logins(monkeypatch: pytest.MonkeyPatch) -> Faults:
    """From now on, every session the key service logs in to fails as the returned Faults say."""
    faults, log_in, log_out = Faults(), hsm_session.log_in, hsm_login.Logins.log_out

    def flaky(path: str, cluster_id: str, pin: str) -> tuple[Any, bool]:
        faults.logins += 1
        faults.check("C_Login")
        session, derives = log_in(path, cluster_id, pin)
        faults.sessions.append(session)
        return _FlakySession(session, faults), derives

    def flaky_logout(logins: hsm_login.Logins, handle: int) -> None:
        faults.check("C_Logout")
        log_out(logins, handle)

    monkeypatch.setattr(hsm_session, "log_in", flaky)
    monkeypatch.setattr(hsm_login.Logins, "log_out", flaky_logout)
    return faults
