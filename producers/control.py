"""Control messages of the client: signals, starts, cancels, each acknowledged before it returns.

Unlike step events (fire and forget, batched by the EventSender), a control call is a request
whose caller needs to know it landed: `client.start(...)` returns a run id the caller will look
for. So each send waits for Kafka's acknowledgement (acks=all, idempotent producer) and raises
SendError when it cannot get one. A producer that lost its sequence state (a message that
expired while its partition had no leader, OutOfOrderSequenceNumber, a fenced epoch) is
replaced and the message sent again within the call's timeout, instead of every later call
failing the same way (producers.renewable_producer).

One producer serves every call of a client, on an event loop of its own in a daemon thread, so
that the synchronous calls work from any thread and the `*_async` ones from any event loop
(the caller's loop only awaits a future). It is created at the first control call. The loop
also hosts the client's tail of run ends (`submit`), which `RunHandle.result()` waits on.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

import steplog.kafka as kafka
from steplog.errors import SendError
from steplog.record_signer import own_signer
from steplog.schemas.base import WireModel
from steplog.schemas.codec import encode
from steplog.schemas.record_signing import RecordSigner, signature_headers

from .producer_watch import stop_producer
from .record_batches import ProducerDiscarded
from .renewable_producer import RenewableProducer

__all__ = ["ControlSender"]

T = TypeVar("T")


class ControlSender:
    """Sends one message at a time and waits for its acknowledgement."""

    def __init__(
        self,
        bootstrap: kafka.Kafka,
        *,
        max_event_bytes: int,
        timeout: float = 30.0,
        signer: RecordSigner | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        # Signed with this process's own key unless told which (README, Security).
        self.signer = signer if signer is not None else own_signer()
        self.max_event_bytes = max_event_bytes
        self.timeout = timeout
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._producer: RenewableProducer | None = None
        self._starting: asyncio.Lock | None = None  # made on the sender's own loop
        self._pid = 0

    def send(self, topic: str, key: str, message: WireModel) -> None:
        """Send and wait for the acknowledgement (blocking); SendError if none came."""
        self.send_after(_nothing(), topic, key, message)

    async def send_async(self, topic: str, key: str, message: WireModel) -> None:
        """`send` for asyncio code: the caller's loop only awaits."""
        await self.send_after_async(_nothing(), topic, key, message)

    def send_after(
        self, first: Coroutine[Any, Any, T], topic: str, key: str, message: WireModel
    ) -> T:
        """Run `first` on the sender's loop, then send as `send` does; returns what `first`
        returned. The client takes a run's mark before its start this way (producers.
        run_results): one hop to the sender's thread instead of two."""
        value = self._encode(first, message)
        future = self.submit(self._first_then_deliver(first, topic, key.encode(), value))
        try:
            return future.result(timeout=self.timeout)
        except TimeoutError:
            future.cancel()
            raise self._no_acknowledgement(message, topic) from None

    async def send_after_async(
        self, first: Coroutine[Any, Any, T], topic: str, key: str, message: WireModel
    ) -> T:
        """`send_after` for asyncio code: the caller's loop only awaits."""
        value = self._encode(first, message)
        future = self.submit(self._first_then_deliver(first, topic, key.encode(), value))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=self.timeout)
        except TimeoutError:
            raise self._no_acknowledgement(message, topic) from None

    def _encode(self, first: Coroutine[Any, Any, Any], message: WireModel) -> bytes:
        try:
            return encode(message, max_bytes=self.max_event_bytes)
        except BaseException:
            first.close()  # never to run: a message that cannot be sent needs no preparing
            raise

    def _no_acknowledgement(self, message: WireModel, topic: str) -> SendError:
        return SendError(
            f"no acknowledgement for {_tag(message)} on {topic!r} within {self.timeout}s "
            f"(Kafka at {self.bootstrap})"
        )

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Run `coroutine` on the sender's event loop, from any thread. The client's tail of
        run ends (producers.run_results) lives on this loop too: one background thread per
        client, whatever it does."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._running_loop())

    def close(self) -> None:
        with self._lock:
            loop, thread, producer = self._loop, self._thread, self._producer
            self._loop = self._thread = self._producer = None
        if loop is None or thread is None:
            return
        if producer is not None:
            stopping = asyncio.run_coroutine_threadsafe(producer.stop(), loop)
            try:
                stopping.result(timeout=self.timeout)
            except Exception:  # closing: nothing left to report it to
                pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=self.timeout)

    # ------------------------------------------------------------------------- mechanics

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                # First use, or a forked child: the parent's thread does not exist here.
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=serve, name="steplog-control", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread, self._producer = loop, thread, None
                self._starting = None
                self._pid = os.getpid()
            return self._loop

    async def _first_then_deliver(
        self, first: Coroutine[Any, Any, T], topic: str, key: bytes, value: bytes
    ) -> T:
        try:
            done = await first
        except KafkaError as exc:
            raise SendError(
                f"nothing sent to {topic!r}: preparing the send failed (Kafka at "
                f"{self.bootstrap}): {exc!r}"
            ) from exc
        try:
            producer = await self._started_producer()
            await (await producer.send(
                topic, key, value, signature_headers(self.signer, topic, value)
            ))
        except (KafkaError, ProducerDiscarded) as exc:
            raise SendError(
                f"could not send to {topic!r} at {self.bootstrap}: {exc!r}"
            ) from exc
        return done

    async def _started_producer(self) -> RenewableProducer:
        if self._producer is not None:
            return self._producer
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:  # concurrent first calls start one producer
            return await self._start_producer()

    async def _start_producer(self) -> RenewableProducer:
        if self._producer is None:
            # Renewed for as long as the client is open: a call gives up at its own timeout.
            producer = RenewableProducer(self._connect, "client control", lambda: True)
            await producer.start()
            self._producer = producer
        return self._producer

    async def _connect(self) -> AIOKafkaProducer:
        producer = kafka.producer(
            self.bootstrap,
            client_id="steplog-client-control",
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            max_request_size=self.max_event_bytes + 64 * 1024,
            **kafka.FAILOVER_PRODUCER_OPTIONS,
        )
        try:
            await kafka.start(producer, self.bootstrap)
        except BaseException:
            await stop_producer(producer)
            raise
        return producer


async def _nothing() -> None:
    return None


def _tag(message: Any) -> str:
    return str(getattr(message, "type", type(message).__name__))
