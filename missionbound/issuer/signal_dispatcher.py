"""The background task that delivers Security Event Tokens in a serving process: outbox
fan-out and RFC 8935 push (PROFILE.md section 10, "Signals"; DESIGN.md "Scale-out": "SSF push
delivery runs from the outbox table, so a crash never loses an event").

:class:`SignalDispatcher`: every ``signals_delivery_seconds``, and whenever
:meth:`SignalDispatcher.wake` is called, fans out and pushes
(:meth:`missionbound.issuer.signal_delivery.SignalTransmitter.run_once` without waiting for
the pushes it starts: they run in push threads and wake the dispatcher when they end), in a
worker thread; a failure is logged (exception type and the driver's first line: no SQL, no claims)
and the next round tries again. It never takes the server down. RFC 8936 poll streams need
no dispatcher: a poll fans out what waits first.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import structlog

from missionbound.issuer.server import MissionIssuer
from missionbound.issuer.signal_delivery import RunReport, SignalTransmitter, safe_detail

log = structlog.get_logger("missionbound.signals")


class SignalDispatcher:
    """The background task of a serving process (``app.state.signal_dispatcher``): a round
    of :meth:`SignalTransmitter.run_once` every ``interval_seconds`` and on :meth:`wake`.

    :meth:`wake` may be called from any thread (the change feed does, when a Mission
    changes); before :meth:`start` it does nothing."""

    def __init__(self, transmitter: SignalTransmitter, *, interval_seconds: float) -> None:
        self.transmitter = transmitter
        self.interval = interval_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle = threading.Event()
        self._idle.set()
        self.rounds = 0
        self._round_done = threading.Condition()
        # A finished push frees a slot: use it at once rather than at the next interval.
        transmitter.on_push_done = self.wake

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the task on the running event loop (the app's lifespan calls this)."""
        if self.running:
            return
        self.transmitter.stopping.clear()
        self._loop = asyncio.get_running_loop()
        self._woken = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="ssf-dispatcher")

    def wake(self) -> None:
        loop, woken = self._loop, self._woken
        if loop is None or woken is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(woken.set)

    async def stop(self) -> None:
        """Cancel the task, let a round in flight finish its current send (bounded), and
        close the transmitter."""
        self.transmitter.stopping.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self._idle.wait, self.transmitter.push_timeout * 3 + 1)
        # Waits for the pushes in flight: each stops after its current send, which its
        # deadline bounds to one push timeout.
        await asyncio.to_thread(self.transmitter.close)

    async def _run(self) -> None:
        assert self._woken is not None
        while True:
            self._woken.clear()
            try:
                self._idle.clear()
                # Shielded: a stop() that cancels this task while the round is only queued
                # for its thread must not drop it, or _idle would never be set again and
                # stop() would wait out its whole bound; the round runs (``stopping`` makes
                # it short) and sets _idle itself.
                report = await asyncio.shield(asyncio.ensure_future(
                    asyncio.to_thread(self._round)))
                if report.fanned_out or report.accepted or report.rejected or report.failed:
                    log.debug("signals_delivered", fanned_out=report.fanned_out,
                              accepted=report.accepted, rejected=report.rejected,
                              failed=report.failed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be briefly away: next round
                log.warning("signal_delivery_failed", error=type(exc).__name__,
                            detail=safe_detail(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), timeout=self.interval)

    def _round(self) -> RunReport:
        try:
            # Pushes run on in their own threads: a slow receiver holds up neither the next
            # fan-out nor the other streams.
            return self.transmitter.run_once(wait=False)
        finally:
            with self._round_done:
                self.rounds += 1
                self._round_done.notify_all()
            self._idle.set()

    def wait_for_rounds(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` rounds have run (True), or ``timeout`` passed."""
        with self._round_done:
            return self._round_done.wait_for(lambda: self.rounds >= count, timeout)


def build_dispatcher(issuer: MissionIssuer) -> SignalDispatcher:
    """The dispatcher ``create_app`` puts on ``app.state.signal_dispatcher``, per settings."""
    settings = issuer.settings
    transmitter = SignalTransmitter(
        issuer,
        push_timeout_seconds=settings.signals_push_timeout_seconds,
        max_backoff_seconds=settings.signals_max_backoff_seconds,
        fan_out_on_poll=settings.signals_delivery_seconds > 0,
    )
    return SignalDispatcher(transmitter, interval_seconds=settings.signals_delivery_seconds)


__all__ = ["SignalDispatcher", "build_dispatcher"]
