"""Concurrent boto3 load against a live server: threads record every answered call's RequestId."""

from __future__ import annotations

import threading
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tests.support.server import KeytrailServer
from tests.support.waits import eventually_blocking

__all__ = ["Load"]


class Load:
    """`threads` boto3 clients calling Encrypt/Decrypt on `key_id` until stopped or the server dies.

    `pause` seconds between a thread's calls bound the rate. `answered` holds the RequestId of
    every call that got an answer (success or AWS error); a call cut off by a dead server has no
    answer and is not counted. `pause()` / `resume()` hold the load.
    """

    def __init__(self, server: KeytrailServer, key_id: str, threads: int = 6, pause: float = 0.0) -> None:
        self.answered: list[str] = []
        self._server, self._key_id, self._pause = server, key_id, pause
        self._stop, self._running = threading.Event(), threading.Event()
        self._running.set()
        self._idle = threading.Semaphore(0)
        self._threads = [threading.Thread(target=self._call, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        for thread in self._threads:
            thread.join(30)

    def pause(self) -> None:
        """Hold every thread after its current call (and wait until all are held)."""
        self._running.clear()
        for _ in self._threads:
            self._idle.acquire(timeout=30)

    def resume(self) -> None:
        self._running.set()

    def wait_for(self, count: int) -> None:
        """Block until at least `count` calls were answered in total."""
        eventually_blocking(lambda: len(self.answered) >= count, timeout=120, what=f"{count} answered calls in all")

    def _call(self, number: int) -> None:
        client = self._server.client("alice" if number % 2 else "app")
        blob = client.encrypt(KeyId=self._key_id, Plaintext=b"load")["CiphertextBlob"]
        while not self._stop.is_set():
            if not self._running.is_set():
                self._idle.release()
                self._running.wait()
                continue
            try:
                reply: Any = client.decrypt(CiphertextBlob=blob) if len(self.answered) % 3 == 0 else \
                    client.encrypt(KeyId=self._key_id, Plaintext=b"load")
            except ClientError as error:  # an AWS error is an answer too, with its own record
                reply = error.response
            except BotoCoreError:  # the server died under us: this call got no answer
                return
            self.answered.append(reply["ResponseMetadata"]["RequestId"])
            if self._pause:
                self._stop.wait(self._pause)  # a steady rate, so the backlog stays readable in time
