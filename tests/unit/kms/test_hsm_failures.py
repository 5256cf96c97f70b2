"""The HSM's failures without an HSM: which PKCS#11 errors keep a session, the time each call is given,
the thread that gives up on a call the HSM does not answer, and passwords not tried twice."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime

import pytest
from pkcs11 import exceptions as p11

from keytrail.kms import hsm_connections
from keytrail.kms.hsm_connections import HsmConnections
from keytrail.kms.hsm_failures import error_name, refused
from keytrail.kms.hsm_module import MODULE_ENV, HsmError, RefusedLogins
from keytrail.kms.hsm_session import TokenSession
from keytrail.kms.hsm_thread import HSM_CALL_TIMEOUT, TIMEOUT_ENV, HsmThread, call_timeout
from keytrail.kms.keystores import CustomKeyStore


def test_refusals_keep_the_session_and_every_other_failure_may_have_broken_it() -> None:
    kept = [p11.DeviceMemory(), p11.HostMemory(), p11.MechanismInvalid(), p11.TemplateInconsistent(),
            p11.AttributeReadOnly(), p11.TokenWriteProtected(), p11.PKCS11Error("Unmapped error code 0x1b"),
            p11.PKCS11Error("Unmapped error code 0x68")]
    dropped = [p11.GeneralError(), p11.FunctionFailed(), p11.OperationActive(), p11.SessionHandleInvalid(),
               p11.UserNotLoggedIn(), p11.DeviceError(), p11.PKCS11Error("Unmapped error code 0x80000001")]
    assert [error_name(e) for e in kept if not refused(e)] == []
    assert [error_name(e) for e in dropped if refused(e)] == []


def test_an_error_is_named_by_its_class_or_python_pkcs11_s_text_of_its_code() -> None:
    assert error_name(p11.DeviceMemory()) == "DeviceMemory"
    assert error_name(p11.PKCS11Error("Unmapped error code 0x1b")) == "Unmapped error code 0x1b"


@pytest.mark.parametrize(("given", "seconds"), [(None, HSM_CALL_TIMEOUT), ("2.5", 2.5), ("0", HSM_CALL_TIMEOUT),
                                                 ("-1", HSM_CALL_TIMEOUT), ("soon", HSM_CALL_TIMEOUT),
                                                 ("nan", HSM_CALL_TIMEOUT), ("inf", HSM_CALL_TIMEOUT)])
def test_each_call_is_given_the_seconds_of_the_environment_if_they_make_sense(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, given: str | None, seconds: float
) -> None:
    if given is None:
        monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    else:
        monkeypatch.setenv(TIMEOUT_ENV, given)
    assert call_timeout() == seconds
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == (given not in (None, "2.5"))


async def test_a_call_not_answered_in_time_holds_only_its_thread_and_hands_over_what_it_gives_late() -> None:
    thread, answer, late = HsmThread(timeout=0.05), threading.Event(), []
    with pytest.raises(TimeoutError):
        await thread.call(lambda: answer.wait(5) and "a session", late=late.append)
    assert thread.stuck
    ran: list[str] = []
    refused = thread.call(lambda: ran.append("queued"))
    with pytest.raises(TimeoutError):  # on its first step: queued behind the call, it would only time out too
        refused.send(None)
    assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 1) == "free"  # the loop's pool is free
    answer.set()
    for _ in range(100):
        if late and not thread.stuck:
            break
        await asyncio.sleep(0.01)
    assert (late, thread.stuck, ran) == (["a session"], False, [])  # the refused call's work never ran
    assert await thread.call(lambda: "answered") == "answered"


async def test_what_a_call_gives_after_its_caller_was_cancelled_is_handed_over() -> None:
    # A login whose caller is cancelled (serve's shutdown cancels the calls still running after its
    # grace period) went on in the thread, and the session it opened was left with nobody.
    thread, started, answer, late = HsmThread(timeout=5.0), threading.Event(), threading.Event(), []
    calling = asyncio.create_task(
        thread.call(lambda: started.set() or (answer.wait(5) and "a session"), late=late.append)
    )
    await asyncio.to_thread(started.wait, 5)  # running: only work still queued is cancelled with its caller
    calling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await calling
    answer.set()
    for _ in range(100):
        if late:
            break
        await asyncio.sleep(0.01)
    assert (late, thread.stuck) == (["a session"], False)
    assert await thread.call(lambda: "answered") == "answered"


class _RawSession:
    """A python-pkcs11 session that counts its closes."""

    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class _Session:
    """A TokenSession that counts its closes."""

    def __init__(self) -> None:
        self.discarded = 0

    def discard(self) -> None:
        self.discarded += 1


async def test_a_session_whose_disconnect_is_cancelled_while_its_close_waits_its_turn_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Cancelled while queued behind another PKCS#11 call, the close was cancelled with it: the
    # session, and the token's login, stayed open with nobody.
    session, thread = _Session(), HsmThread(timeout=5.0)
    monkeypatch.setenv(MODULE_ENV, "/the/module.so")
    monkeypatch.setattr(hsm_connections, "open_session", lambda path, cluster, pin: session)
    connections = HsmConnections(thread)
    await connections.connect(CustomKeyStore("111122223333", "us-east-1", "cks-0123456789abcdef0", "hsm",
                                             "cluster-abcdefghijk", "pem", "pin", datetime.now(UTC)))
    started, release = threading.Event(), threading.Event()
    busy = asyncio.create_task(thread.call(lambda: started.set() or release.wait(5)))
    await asyncio.to_thread(started.wait, 5)
    disconnecting = asyncio.create_task(connections.disconnect("cks-0123456789abcdef0"))
    await asyncio.sleep(0.05)  # its close queued behind the busy call
    disconnecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await disconnecting
    release.set()
    await busy
    assert await thread.call(lambda: session.discarded) == 1


async def test_a_session_whose_close_times_out_waiting_its_turn_is_closed_before_the_next_login(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A Disconnect during a call the HSM answered late: its close, queued behind that call, was
    # cancelled when the wait for it timed out. The session kept the token's login, and every
    # later login of the store was refused (USER_LOGGED_IN) until the process restarted.
    thread, sessions = HsmThread(timeout=0.2), [_Session(), _Session()]
    monkeypatch.setenv(MODULE_ENV, "/the/module.so")
    monkeypatch.setattr(hsm_connections, "open_session", lambda path, cluster, pin: sessions[0])
    connections = HsmConnections(thread)
    store = CustomKeyStore("111122223333", "us-east-1", "cks-0123456789abcdef0", "hsm", "cluster-abcdefghijk",
                           "pem", "pin", datetime.now(UTC))
    await connections.connect(store)
    started, release = threading.Event(), threading.Event()
    busy = asyncio.create_task(thread.call(lambda: started.set() or release.wait(5)))
    await asyncio.to_thread(started.wait, 5)
    await connections.disconnect(store.store_id)  # gives up waiting for the close after the timeout
    with pytest.raises(TimeoutError):
        await busy
    closed_before_login: list[int] = []
    monkeypatch.setattr(hsm_connections, "open_session",
                        lambda path, cluster, pin: closed_before_login.append(sessions[0].discarded) or sessions[1])
    release.set()
    for _ in range(100):
        if not thread.stuck:
            break
        await asyncio.sleep(0.01)
    await connections.connect(store)
    assert (sessions[0].discarded, closed_before_login) == (1, [1])


def test_a_session_is_closed_once_however_often_it_is_discarded() -> None:
    # Closed twice (a close queued again after its caller was cancelled, a session closed under the
    # service and then dropped), the second C_CloseSession could end a session the module has given
    # the same handle since.
    raw = _RawSession()
    session = TokenSession(raw)
    session.discard()
    session.close()
    session.discard()
    assert raw.closed == 1


def test_a_call_the_hsm_never_answers_does_not_keep_the_process_from_exiting() -> None:
    # serve stopping on SIGTERM while a network HSM's link is dead: the interpreter joined the
    # PKCS#11 thread at exit, and so never exited.
    script = (
        "import asyncio, threading\n"
        "from keytrail.kms.hsm_thread import HsmThread\n"
        "async def main():\n"
        "    try:\n"
        "        await HsmThread(timeout=0.1).call(threading.Event().wait)\n"
        "    except TimeoutError:\n"
        "        print('gave up')\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=15,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=False)
    assert (done.returncode, done.stdout) == (0, "gave up\n")


async def test_the_thread_of_a_key_service_no_longer_used_ends() -> None:
    thread = HsmThread(timeout=1.0)
    worker = await thread.call(threading.current_thread)
    assert worker.name == "keytrail-pkcs11" and worker.daemon
    del thread
    gc.collect()
    worker.join(5.0)
    assert not worker.is_alive()


def test_a_password_refused_for_good_is_refused_again_without_a_login() -> None:
    refusals = RefusedLogins()
    refusals.note("cks-1", "wrong", HsmError("INVALID_CREDENTIALS", "PinIncorrect"))
    refusals.note("cks-2", "right", HsmError("NETWORK_ERRORS", "no answer"))  # passing: tried again
    with pytest.raises(HsmError) as refused_again:
        refusals.check("cks-1", "wrong")
    assert refused_again.value.code == "INVALID_CREDENTIALS" and "wrong" not in str(refused_again.value)
    refusals.check("cks-1", "another")
    refusals.check("cks-2", "right")
    refusals.forget("cks-1")
    refusals.check("cks-1", "wrong")
