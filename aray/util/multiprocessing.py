"""``multiprocessing.Pool`` over aray actors: Ray's ``ray.util.multiprocessing``.

:class:`Pool` has the standard library's API (``apply``, ``map``, ``imap``, ``starmap``, their
``_async`` forms, ``close``/``terminate``/``join``, the context manager) and runs the work
on a set of actors, one per process of the pool, spread over the cluster. Work goes out in
chunks of items, one actor call per chunk, so that a map over many small items pays the
cost of a call per chunk rather than per item.

How it runs: every call of the pool becomes a *job* that hands out chunks. The pool keeps
a few calls in flight on each actor (for a map's chunks two: one running and one waiting in
its mailbox, so that an actor never idles for the round trip) and gives the next chunk to
the first actor with room. A thread of the pool (as the standard library's result handler)
takes the finished calls, stores their results, sends out the next chunks and runs the
callbacks, so that a callback never runs on aray's own event loop.

Built on the public API only: :func:`aray.remote`, actor calls, ``ObjectRef.future()``,
:func:`aray.kill` and ``__ray_terminate__``.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import TimeoutError
from multiprocessing import pool as stdlib_pool
from typing import Any

import cloudpickle

import aray

__all__ = ["AsyncResult", "IMapIterator", "Pool", "TimeoutError"]

# the standard library's errors for these cases (typeshed does not list them)
MaybeEncodingError = stdlib_pool.MaybeEncodingError  # type: ignore[attr-defined]
RemoteTraceback = stdlib_pool.RemoteTraceback  # type: ignore[attr-defined]

# chunk calls in flight per actor for map's large chunks: one running, one queued behind it,
# so an actor never idles for the round trip and the rest go to whichever actor is free
# first (see the module doc); single calls and imap's small chunks keep more queued, since
# there the round trip per call, not the balance, is what takes the time
_MAP_DEPTH = 2
_CALL_DEPTH = 8
_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"
_ADDRESS_ENV = ("ARAY_ADDRESS", "RAY_ADDRESS")


# --- the actor ---------------------------------------------------------------------------


class _Failure:
    """What an actor returns for a call whose function raised: the exception and the text
    of its traceback (which does not pickle), so that ``get()`` raises the original type."""

    def __init__(self, exc: BaseException, tb: str) -> None:
        self.exc = exc
        self.tb = tb

    @classmethod
    def capture(cls, exc: BaseException) -> _Failure:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            cloudpickle.dumps(exc)
        except Exception as err:  # the caller gets what the standard library gives instead
            exc = MaybeEncodingError(err, exc)
        return cls(exc, tb)

    def exception(self) -> BaseException:
        # as the standard library: the remote traceback is the cause of the re-raised error
        self.exc.__cause__ = RemoteTraceback(f'\n"""\n{self.tb}"""')
        return self.exc


class _PoolWorker:
    """One process of a :class:`Pool`: runs the initializer once, then chunks of calls."""

    def __init__(self, initializer: Callable | None, initargs: tuple) -> None:
        # kept for pid(), which the pool calls first: the pool's creator gets the error of
        # the initializer itself (a constructor's error would come as ActorDiedError)
        self.init_failure: _Failure | None = None
        if initializer is not None:
            try:
                initializer(*initargs)
            except Exception as exc:
                self.init_failure = _Failure.capture(exc)

    def pid(self) -> int | _Failure:
        return self.init_failure or os.getpid()

    def run_chunk(self, func: Callable, items: list, star: bool) -> list | _Failure:
        if self.init_failure is not None:  # a replacement actor whose initializer failed
            return self.init_failure
        out = []
        try:
            for item in items:
                out.append(func(*item) if star else func(item))
        except Exception as exc:  # as the standard library: a chunk stops at its first error
            return _Failure.capture(exc)
        return out

    def run_call(self, func: Callable, args: tuple, kwds: dict) -> Any:
        if self.init_failure is not None:
            return self.init_failure
        try:
            return func(*args, **kwds)
        except Exception as exc:
            return _Failure.capture(exc)


_Worker = aray.remote(_PoolWorker)


# --- results -----------------------------------------------------------------------------


class AsyncResult:
    """The result of :meth:`Pool.apply_async`, :meth:`Pool.map_async` or
    :meth:`Pool.starmap_async`, as the standard library's ``AsyncResult``.

    Example:
        >>> from aray.util.multiprocessing import Pool
        >>> with Pool(processes=1) as pool:
        ...     result = pool.apply_async(pow, (2, 10))
        ...     result.get(timeout=30), result.ready(), result.successful()
        (1024, True, True)
    """

    def __init__(self, n_chunks: int, single: bool, callback: Callable | None,
                 error_callback: Callable | None) -> None:
        self._chunks: list[Any] = [None] * n_chunks
        self._left = n_chunks
        self._single = single
        self._callback = callback
        self._error_callback = error_callback
        self._errors: dict[int, BaseException] = {}
        self._value: Any = None
        # the pool's thread fills the result in, and terminate() may end it from another
        # thread: the lock makes sure that exactly one of them finishes it
        self._lock = threading.Lock()
        self._finished = False
        self._event = threading.Event()
        self._done_hooks: list[Callable[[AsyncResult], None]] = []
        if n_chunks == 0:  # a map over nothing is ready at once, as in the standard library
            self._finished = True
            self._finish()

    def ready(self) -> bool:
        """Whether the call has finished (successfully or not).

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> with Pool(processes=1) as pool:
            ...     pool.map_async(abs, []).ready()
            True
        """
        return self._event.is_set()

    def successful(self) -> bool:
        """Whether the call finished without raising; ValueError if it is not ready.

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> with Pool(processes=1) as pool:
            ...     result = pool.apply_async(int, ("x",))
            ...     result.wait(30)
            ...     result.successful()
            False
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return not self._errors

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready or ``timeout`` seconds pass (no error either way).

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> with Pool(processes=1) as pool:
            ...     result = pool.apply_async(abs, (-1,))
            ...     result.wait(30)
            ...     result.ready()
            True
        """
        self._event.wait(timeout)

    def get(self, timeout: float | None = None) -> Any:
        """The result; re-raises the error of the function (its original type), or
        ``multiprocessing.TimeoutError`` if it is not ready within ``timeout`` seconds.

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> with Pool(processes=1) as pool:
            ...     pool.map_async(abs, [-1, -2]).get(timeout=30)
            [1, 2]
        """
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._errors:
            raise self._errors[min(self._errors)]
        return self._value

    # called by the pool's thread
    def _set(self, index: int, ok: bool, value: Any) -> None:
        with self._lock:
            if self._finished:
                return
            if ok:
                self._chunks[index] = value
            else:
                self._errors[index] = value
            self._left -= 1
            self._finished = self._left == 0
            if not self._finished:
                return
        self._finish()

    def _fail_all(self, exc: BaseException) -> None:
        """Make an unfinished result fail with ``exc`` (its pool was terminated)."""
        with self._lock:
            if self._finished:
                return
            self._errors.setdefault(len(self._chunks), exc)  # after any real error
            self._finished = True
        self._finish()

    def _finish(self) -> None:
        if not self._errors:
            self._value = (self._chunks[0] if self._single
                           else list(itertools.chain.from_iterable(self._chunks)))
        self._chunks = []
        with self._lock:
            self._event.set()
            hooks, self._done_hooks = self._done_hooks, []
        # as the standard library: once everything is in, one callback with the whole value
        # or one error callback with the first error
        if self._errors:
            if self._error_callback is not None:
                self._error_callback(self._errors[min(self._errors)])
        elif self._callback is not None:
            self._callback(self._value)
        for hook in hooks:
            hook(self)

    def _on_done(self, hook: Callable[[AsyncResult], None]) -> None:
        """Run ``hook(self)`` once ready, on the pool's thread (at once if ready now); the
        joblib backend waits this way."""
        with self._lock:
            if not self._event.is_set():
                self._done_hooks.append(hook)
                return
        hook(self)


class IMapIterator:
    """The iterator :meth:`Pool.imap` and :meth:`Pool.imap_unordered` return.

    ``next(timeout)`` waits at most ``timeout`` seconds for the next result and raises
    ``multiprocessing.TimeoutError`` if it is not there by then, as in the standard library.

    Example:
        >>> from aray.util.multiprocessing import Pool
        >>> with Pool(processes=1) as pool:
        ...     results = pool.imap(abs, [-1, -2, -3])
        ...     results.next(timeout=30), list(results)
        (1, [2, 3])
    """

    def __init__(self, ordered: bool) -> None:
        self._ordered = ordered
        self._cond = threading.Condition()
        self._chunks: dict[int, tuple[bool, Any]] = {}  # arrived, not yet read
        self._arrival: collections.deque[int] = collections.deque()
        self._items: collections.deque[Any] = collections.deque()  # of the chunk being read
        self._next_chunk = 0  # ordered: the chunk to read next
        self._read = 0  # chunks read
        self._total: int | None = None  # known once the input has run out

    def __iter__(self) -> IMapIterator:
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: float | None = None) -> Any:
        """The next result, waiting at most ``timeout`` seconds for it.

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> with Pool(processes=1) as pool:
            ...     pool.imap_unordered(abs, [-5]).next(timeout=30)
            5
        """
        with self._cond:
            while not self._items:
                if self._total is not None and self._read >= self._total:
                    raise StopIteration
                index = self._ready_chunk()
                if index is None:
                    if not self._cond.wait(timeout):
                        raise TimeoutError
                    continue
                ok, value = self._chunks.pop(index)
                self._read += 1
                self._next_chunk += 1
                if not ok:
                    raise value
                self._items.extend(value)
            return self._items.popleft()

    def _ready_chunk(self) -> int | None:
        if self._ordered:
            return self._next_chunk if self._next_chunk in self._chunks else None
        return self._arrival.popleft() if self._arrival else None

    # called by the pool's thread (and by submitting threads for the end of the input)
    def _set(self, index: int, ok: bool, value: Any) -> None:
        with self._cond:
            self._chunks[index] = (ok, value)
            if not self._ordered:
                self._arrival.append(index)
            self._cond.notify_all()

    def _set_length(self, n_chunks: int) -> None:
        with self._cond:
            self._total = n_chunks
            self._cond.notify_all()

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            index = self._next_chunk if self._ordered else -1
            self._chunks = {index: (False, exc)}
            self._arrival = collections.deque([index])
            self._total = self._read + 1
            self._cond.notify_all()


# --- jobs: what the pool hands out to its actors -----------------------------------------


class _Job:
    """A call of the pool: a source of actor calls and the result they fill in."""

    result: Any
    depth = _CALL_DEPTH  # the calls of this job an actor may have in flight

    def next_call(self) -> tuple[int, str, tuple] | None:
        """The next chunk to run, as ``(index, method name, arguments)``; None when all
        have gone out."""
        raise NotImplementedError

    def deliver(self, index: int, ok: bool, value: Any) -> None:
        self.result._set(index, ok, value)

    def done(self) -> bool:
        """Whether every chunk has gone out and come back."""
        return self.result.ready()


class _ApplyJob(_Job):
    def __init__(self, func: Callable, args: tuple, kwds: dict, result: AsyncResult) -> None:
        self._call: tuple | None = (func, args, kwds)
        self.result = result

    def next_call(self) -> tuple[int, str, tuple] | None:
        call, self._call = self._call, None
        return None if call is None else (0, "run_call", call)


class _MapJob(_Job):
    depth = _MAP_DEPTH

    def __init__(self, func: Callable, items: list, bounds: list[tuple[int, int]],
                 star: bool, result: AsyncResult) -> None:
        self._func = func
        self._items = items
        self._bounds = bounds  # (start, end) of each chunk, in order
        self._star = star
        self._next = 0
        self.result = result

    def next_call(self) -> tuple[int, str, tuple] | None:
        if self._next >= len(self._bounds):
            return None
        start, end = self._bounds[self._next]
        index, self._next = self._next, self._next + 1
        return index, "run_chunk", (self._func, self._items[start:end], self._star)


def _fixed_chunks(n: int, chunksize: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunksize, n)) for start in range(0, n, chunksize)]


def _guided_chunks(n: int, processes: int) -> list[tuple[int, int]]:
    """Chunks that shrink as the map goes, each a share of what is left (the "guided"
    schedule of OpenMP): large ones first, for few calls, and small ones last, so that the
    actors run out of work at about the same time. With the standard library's four equal
    chunks per process, an actor slowed down (by other load, by costlier items) finishes up
    to a whole chunk (a quarter of its work) after the others.

    Example:
        >>> _guided_chunks(10, 2)
        [(0, 3), (3, 5), (5, 7), (7, 8), (8, 9), (9, 10)]
    """
    # no chunk below 1/64 of each actor's share: about 4 log(32) + 4, some 18, chunks
    smallest = max(1, -(-n // (processes * 64)))
    bounds = []
    start = 0
    while start < n:
        size = max(smallest, -(-(n - start) // (2 * processes)))
        bounds.append((start, min(start + size, n)))
        start += size
    return bounds


class _IMapJob(_Job):
    """Reads its input lazily: a chunk is taken from the iterable when an actor has room."""

    def __init__(self, func: Callable, iterable: Iterable, chunksize: int,
                 result: IMapIterator) -> None:
        self._func = func
        self._iter: Iterator | None = iter(iterable)
        self._chunksize = chunksize
        self._next = 0
        self._pending = 0  # chunks out, not delivered
        self.result = result

    def next_call(self) -> tuple[int, str, tuple] | None:
        if self._iter is None:
            return None
        index = self._next
        try:
            chunk = list(itertools.islice(self._iter, self._chunksize))
        except Exception as exc:  # the input's error is the result at its place, as in stdlib
            self._iter = None
            self.result._set(index, False, exc)
            self.result._set_length(index + 1)
            return None
        if not chunk:
            self._iter = None
            self.result._set_length(index)
            return None
        self._next += 1
        self._pending += 1
        return index, "run_chunk", (self._func, chunk, False)

    def deliver(self, index: int, ok: bool, value: Any) -> None:
        self._pending -= 1
        self.result._set(index, ok, value)

    def done(self) -> bool:
        return self._iter is None and self._pending == 0


# --- the pool ----------------------------------------------------------------------------


class _Slot:
    """A place for one actor of the pool; its actor is replaced when it retires or dies."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.in_flight = 0
        self.calls = 0


class _Engine:
    """The state of a :class:`Pool` and the thread that runs it; kept apart from the Pool
    so that a pool dropped without ``close()`` can be collected (and its actors ended)."""

    def __init__(self, processes: int, initializer: Callable | None, initargs: tuple,
                 maxtasksperchild: int | None, remote_args: dict) -> None:
        self.state = _RUN
        self.lock = threading.RLock()
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.jobs: collections.deque[_Job] = collections.deque()  # with chunks to hand out
        self.active: set[_Job] = set()  # not finished
        self.maxtasks = maxtasksperchild
        self.stopping: list[Any] = []  # refs of __ray_terminate__ calls
        self.finished = threading.Event()  # closed, and every job done
        self.worker = _Worker.options(**remote_args)
        self.init = (initializer, tuple(initargs))
        self.slots = [_Slot(self._new_actor()) for _ in range(processes)]
        self.thread = threading.Thread(target=self._run, name="aray-pool", daemon=True)
        self.thread.start()

    def _new_actor(self) -> Any:
        return self.worker.remote(*self.init)

    # --- submitting (any thread, under the lock) ----------------------------------------
    def add(self, job: _Job) -> None:
        with self.lock:
            if self.state != _RUN:
                raise ValueError("Pool not running")
            self.jobs.append(job)
            self.active.add(job)
            self._dispatch()

    def _dispatch(self) -> None:
        while self.jobs and self.state != _TERMINATE:
            slot = min(self.slots, key=lambda s: s.in_flight)
            job = self.jobs[0]
            if slot.in_flight >= job.depth:
                return
            call = job.next_call()
            if call is None:
                self.jobs.popleft()
                if job.done():  # an imap whose input was empty, or raised at once
                    self.active.discard(job)
                continue
            index, method, args = call
            ref = getattr(slot.actor, method).remote(*args)
            slot.in_flight += 1
            slot.calls += 1
            future = ref.future()
            # runs on aray's loop: hand over to the pool's thread and nothing more
            future.add_done_callback(
                lambda f, slot=slot, job=job, index=index: self.events.put((slot, job, index, f)))
            if self.maxtasks and slot.calls >= self.maxtasks:
                self._retire(slot)

    def _retire(self, slot: _Slot) -> None:
        # the old actor ends once its calls are answered; the slot starts over with a new one
        self.stopping.append(slot.actor.__ray_terminate__.remote())
        replacement = _Slot(self._new_actor())
        self.slots[self.slots.index(slot)] = replacement

    # --- the pool's thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            event = self.events.get()
            if event is None:
                return
            if event == _CLOSE:  # from close(), or from a Pool collected while running
                with self.lock:
                    if self.state == _RUN:
                        self.state = _CLOSE
            else:
                self._finished_call(*event)
            with self.lock:
                if self.state == _TERMINATE:
                    return
                if self.state == _CLOSE and not self.active:
                    self._stop_actors()  # no call is in flight: the thread's work is done
                    return

    def _finished_call(self, slot: _Slot, job: _Job, index: int, future: Any) -> None:
        ok, value = _outcome(future)
        with self.lock:
            slot.in_flight -= 1
            if self.state == _TERMINATE:
                return
            if not ok and isinstance(value, aray.exceptions.ActorDiedError) and \
                    slot in self.slots:
                # a worker that crashed is replaced, as the standard library does
                self.slots[self.slots.index(slot)] = _Slot(self._new_actor())
        try:
            job.deliver(index, ok, value)  # may run the user's callbacks: not under the lock
        except Exception:
            traceback.print_exc()  # a failing callback must not stop the pool's thread
        with self.lock:
            if job.done():
                self.active.discard(job)
            self._dispatch()

    def _stop_actors(self) -> None:
        if not self.finished.is_set():
            self.stopping += [slot.actor.__ray_terminate__.remote() for slot in self.slots]
            self.finished.set()

    # --- ending --------------------------------------------------------------------------
    def close(self) -> None:
        # no aray call here (the pool's thread ends the actors): safe from __del__, which
        # may run on any thread, aray's loop included
        with self.lock:
            if self.state == _RUN:
                self.state = _CLOSE
        self.events.put(_CLOSE)

    def terminate(self) -> None:
        with self.lock:
            if self.state == _TERMINATE:
                return
            self.state = _TERMINATE
            jobs, self.active = list(self.active), set()
            self.jobs.clear()
            actors = [slot.actor for slot in self.slots]
            self.finished.set()
        for actor in actors:
            try:
                aray.kill(actor)
            except Exception:  # gone already (its cluster shut down): nothing to end
                pass
        error = RuntimeError("the pool was terminated before this result was ready")
        for job in jobs:
            try:
                job.result._fail_all(error)
            except Exception:
                traceback.print_exc()
        self.events.put(None)

    def join(self, timeout: float | None = None) -> None:
        self.finished.wait(timeout)
        with self.lock:
            stopping, self.stopping = self.stopping, []
        if stopping:
            try:
                aray.wait(stopping, num_returns=len(stopping), timeout=timeout)
            except Exception:  # the cluster is gone: so are the actors
                pass
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)


def _outcome(future: Any) -> tuple[bool, Any]:
    try:
        value = future.result()
    except BaseException as exc:  # the call failed in aray (a dead actor, a result that
        return False, exc         # cannot be pickled): its error is the result
    if isinstance(value, _Failure):
        return False, value.exception()
    return True, value


class Pool:
    """A pool of actors with the API of the standard library's ``multiprocessing.Pool``,
    as Ray's ``ray.util.multiprocessing.Pool``.

    Each process of the pool is an actor holding 1 CPU (``aray_remote_args`` changes
    that), so the pool spreads over the cluster's nodes; ``processes`` defaults to the
    cluster's CPUs. Without a running cluster the pool starts one (or joins the one at
    ``aray_address``, or at ``ARAY_ADDRESS``/``RAY_ADDRESS``).

    Args:
        processes: how many actors; default: the cluster's CPU count.
        initializer: called as ``initializer(*initargs)`` in each actor when it starts.
        initargs: the arguments of ``initializer``.
        maxtasksperchild: after this many chunks an actor is replaced by a new one.
        context: accepted for the standard library's signature, and ignored.
        aray_address: the cluster to join when aray is not initialized yet.
        ray_address: Ray's name for ``aray_address``.
        aray_remote_args: actor options for the pool's actors (``num_cpus``,
            ``resources``...); Ray's name ``ray_remote_args`` works too.
        ray_remote_args: Ray's name for ``aray_remote_args``.

    Raises:
        ValueError: ``processes`` is not positive, or asks for more CPUs than the cluster has.

    Example:
        >>> from aray.util.multiprocessing import Pool
        >>> def square(x):
        ...     return x * x
        >>> with Pool(processes=2) as pool:
        ...     pool.map(square, range(5))
        [0, 1, 4, 9, 16]
    """

    def __init__(self, processes: int | None = None, initializer: Callable | None = None,
                 initargs: Iterable = (), maxtasksperchild: int | None = None,
                 context: Any = None, aray_address: str | None = None,
                 ray_address: str | None = None, aray_remote_args: dict | None = None,
                 ray_remote_args: dict | None = None) -> None:
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
                not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0):
            raise ValueError("maxtasksperchild must be a positive int or None")
        remote_args = {"num_cpus": 1, **(ray_remote_args or {}), **(aray_remote_args or {})}
        _connect(aray_address or ray_address, processes)
        cpus = int(aray.cluster_resources().get("CPU", 0))
        if processes is None:
            processes = max(cpus, 1)
        if processes < 1:
            raise ValueError("Number of processes must be at least 1")
        per_actor = remote_args.get("num_cpus") or 0
        if per_actor and processes * per_actor > cpus:
            raise ValueError(
                f"Tried to start a pool with {processes} processes of {per_actor:g} CPU "
                f"each, but the cluster has {cpus} CPUs; ask for fewer processes, or pass "
                "aray_remote_args={'num_cpus': 0} for actors that hold no CPU")
        self._processes = processes
        self._engine = _Engine(processes, initializer, tuple(initargs or ()),
                               maxtasksperchild, remote_args)
        # Wait for the actors as the standard library waits for its processes: an
        # initializer that fails raises here, not at the first map
        try:
            for answer in aray.get([slot.actor.pid.remote() for slot in self._engine.slots]):
                if isinstance(answer, _Failure):
                    raise answer.exception()
        except BaseException:
            self._engine.terminate()
            raise

    # --- one call ----------------------------------------------------------------------
    def apply(self, func: Callable, args: Iterable = (), kwds: dict | None = None) -> Any:
        """Call ``func(*args, **kwds)`` in an actor of the pool and return its result.

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> with Pool(processes=1) as pool:
            ...     pool.apply(divmod, (7, 2))
            (3, 1)
        """
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable, args: Iterable = (), kwds: dict | None = None,
                    callback: Callable[[Any], Any] | None = None,
                    error_callback: Callable[[BaseException], Any] | None = None
                    ) -> AsyncResult:
        """:meth:`apply` without waiting: returns an :class:`AsyncResult`.

        ``callback(result)`` or ``error_callback(exception)`` runs on a thread of the pool
        once the call has finished.

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> with Pool(processes=1) as pool:
            ...     pool.apply_async(divmod, (7, 2)).get(timeout=30)
            (3, 1)
        """
        result = AsyncResult(1, True, callback, error_callback)
        self._engine.add(_ApplyJob(func, tuple(args or ()), dict(kwds or {}), result))
        return result

    # --- maps --------------------------------------------------------------------------
    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``[func(x) for x in iterable]``, computed by the pool's actors a chunk at a time.

        Without ``chunksize``, the chunks shrink as the map goes: large ones first (few
        calls), small ones last (the actors finish together).

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> with Pool(processes=2) as pool:
            ...     pool.map(abs, [-1, -2, -3], chunksize=2)
            [1, 2, 3]
        """
        return self.map_async(func, iterable, chunksize).get()

    def map_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                  callback: Callable[[list], Any] | None = None,
                  error_callback: Callable[[BaseException], Any] | None = None
                  ) -> AsyncResult:
        """:meth:`map` without waiting: returns an :class:`AsyncResult` of the list.

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> with Pool(processes=2) as pool:
            ...     pool.map_async(abs, [-1, -2]).get(timeout=30)
            [1, 2]
        """
        return self._map_async(func, iterable, chunksize, False, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable[Iterable],
                chunksize: int | None = None) -> list:
        """:meth:`map` where each item is a tuple of arguments: ``func(*item)``.

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> with Pool(processes=2) as pool:
            ...     pool.starmap(pow, [(2, 3), (3, 2)])
            [8, 9]
        """
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(self, func: Callable, iterable: Iterable[Iterable],
                      chunksize: int | None = None,
                      callback: Callable[[list], Any] | None = None,
                      error_callback: Callable[[BaseException], Any] | None = None
                      ) -> AsyncResult:
        """:meth:`starmap` without waiting: returns an :class:`AsyncResult` of the list.

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> with Pool(processes=2) as pool:
            ...     pool.starmap_async(pow, [(2, 3)]).get(timeout=30)
            [8]
        """
        return self._map_async(func, iterable, chunksize, True, callback, error_callback)

    def _map_async(self, func: Callable, iterable: Iterable, chunksize: int | None,
                   star: bool, callback: Callable | None,
                   error_callback: Callable | None) -> AsyncResult:
        self._check_running()
        items = iterable if isinstance(iterable, list) else list(iterable)
        if star:
            items = [tuple(args) for args in items]
        if chunksize is None:
            bounds = _guided_chunks(len(items), self._processes)
        else:
            _check_chunksize(chunksize)
            bounds = _fixed_chunks(len(items), chunksize)
        result = AsyncResult(len(bounds), False, callback, error_callback)
        if bounds:
            self._engine.add(_MapJob(func, items, bounds, star, result))
        return result

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> IMapIterator:
        """:meth:`map` as an iterator: results in order, each as soon as it (and every
        result before it) is ready. The input is read as actors have room for it.

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> with Pool(processes=2) as pool:
            ...     list(pool.imap(abs, iter([-1, -2, -3])))
            [1, 2, 3]
        """
        return self._imap(func, iterable, chunksize, ordered=True)

    def imap_unordered(self, func: Callable, iterable: Iterable,
                       chunksize: int = 1) -> IMapIterator:
        """:meth:`imap` with the results in the order they are ready.

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> with Pool(processes=2) as pool:
            ...     sorted(pool.imap_unordered(abs, [-1, -2, -3]))
            [1, 2, 3]
        """
        return self._imap(func, iterable, chunksize, ordered=False)

    def _imap(self, func: Callable, iterable: Iterable, chunksize: int,
              ordered: bool) -> IMapIterator:
        self._check_running()
        _check_chunksize(chunksize)
        result = IMapIterator(ordered)
        self._engine.add(_IMapJob(func, iterable, chunksize, result))
        return result

    # --- ending ------------------------------------------------------------------------
    def close(self) -> None:
        """Take no more work; the actors end once the work given so far is done.

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> pool = Pool(processes=1)
            >>> result = pool.map_async(abs, [-1])
            >>> pool.close()
            >>> pool.join()
            >>> result.get()
            [1]
        """
        self._engine.close()

    def terminate(self) -> None:
        """End the actors at once; results not ready by then fail with ``RuntimeError``.

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> pool = Pool(processes=1)
            >>> pool.terminate()
            >>> pool.join()
        """
        self._engine.terminate()

    def join(self) -> None:
        """Wait for the actors to end, after :meth:`close` or :meth:`terminate`.

        Raises:
            ValueError: the pool is still running.

        Example:
            >>> from aray.util.multiprocessing import Pool
            >>> pool = Pool(processes=1)
            >>> pool.close()
            >>> pool.join()
        """
        if self._engine.state == _RUN:
            raise ValueError("Pool is still running")
        self._engine.join()

    def _check_running(self) -> None:
        if self._engine.state != _RUN:
            raise ValueError("Pool not running")

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.terminate()  # as the standard library's pool (and Ray's)

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None and engine.state == _RUN:
            # never call into aray here (the collection may run on its loop): the pool's
            # thread ends the actors once the work given so far is done
            engine.close()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.Pool state={self._engine.state} " \
               f"processes={self._processes}>"


def _connect(address: str | None, processes: int | None) -> None:
    """Start aray as Ray's pool does: join ``address`` (or the cluster of the address
    variables), else start a local cluster with ``processes`` CPUs."""
    if aray.is_initialized():
        return
    if address is not None:
        aray.init(address=address)
    elif any(os.environ.get(name) for name in _ADDRESS_ENV):
        aray.init(address=next(os.environ[n] for n in _ADDRESS_ENV if os.environ.get(n)))
    else:
        aray.init(num_cpus=processes)


def _check_chunksize(chunksize: Any) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")

