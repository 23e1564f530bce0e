"""A multi-producer, multi-consumer Queue over a shared-memory ring, and Pipe built on it.

How an item travels::

    producer process                   shared memory (one ring per Queue)    consumer process
    ----------------                   ----------------------------------    ----------------
    put(x) -> local list               [hdr | rec | rec | rec ........]      get() claims one item
      |  1000 items, or the flusher     each rec = one pickled *list*         of the head record
      |  thread once the producer       of items, with its batch id,          under the mutex; the
      v  pauses                         item count and size                   record is copied out
    pickle the list once, copy it  -->                                  -->  and unpickled once
    in under the ring mutex                                                   per consumer process

Why it is fast: ``multiprocessing.Queue`` pickles, locks and writes each item through a pipe and
the consumer does one lock, two reads and one unpickle per item. Here a producer pickles a batch
in one call and copies it in with one lock; a consumer unpickles a batch once and then claims
items from it with a mutex round-trip and three integer updates in shared memory, no system call.

Why no item is ever stranded: a consumer never takes a record away whole. The shared ``SUB``
counter says how many items of the head record are claimed, so items a consumer has not asked for
stay in the queue for every other consumer. (The price: with several consumers, each consumer
process unpickles each batch it claims from; records are capped in bytes to bound that work.)

Semantics as ``multiprocessing.Queue``: ``put`` may return before the item is visible (it waits in
this process's buffer; a background thread flushes it as soon as the producer pauses, and at exit),
items from one producer thread arrive in order, and objects are pickled at flush time, so do not
mutate an object after putting it. ``flush()`` makes everything put so far visible.

Shared header (int64 slots) and record layout::

    header: HEAD TAIL SUB NEXT_ID ITEMS CAP SUB_POS HOLDER, then the consumers' and producers'
            wait lists (SUB counts the claimed items of the record at SUB_POS; HOLDER is the pid
            holding the mutex)
    record: [batch_id q][n i][flags i][nbytes q][payload, padded to 8 bytes]

Positions only grow; ``pos % CAP`` is the offset. A record never wraps: the writer skips the end of
the ring (with a WRAP marker when a header fits there). An item whose pickle is bigger than
``CAP // 4`` travels in its own shared-memory file (a SPILL record names it); its reader unlinks it
and the owner removes any left at close.
"""

from __future__ import annotations

import _posixshmem
import glob
import os
import pickle
import queue as _stdlib_queue
import struct
import sys
import threading
import weakref
from collections.abc import Iterable
from multiprocessing import util
from time import monotonic
from typing import Any

from allcores._engine.shm import check_owner
from allcores.sync._primitives import _registry
from allcores.sync._resources import (
    FINALIZE_PRIORITY,
    LOCK_CHECK_S,
    SEMAPHORE,
    Owner,
    RobustMutex,
    WaitList,
    _pid,
    create_mutex,
    create_semlock,
    create_shm,
    my_semaphore,
    new_name,
    open_mutex,
    open_semlock,
    open_shm,
    sleep_on,
)

__all__ = ["Connection", "Pipe", "Queue"]

# Tunables -------------------------------------------------------------------------------------
# Ring size. Sparse in /dev/shm until written; 1 MiB holds about 100 batches of small tuples.
RING_BYTES = 1 << 20
# Items a producer buffers before pickling them as one record in the calling thread. Bigger
# batches amortise more but make each consumer's first get() from a batch slower.
BATCH_ITEMS = 1000
# A pickled batch larger than this is split; a single item larger than this spills to its own file.
MAX_RECORD_FRACTION = 4
# A flusher thread with nothing to do for this long exits (so an idle program has no extra thread,
# and a later fork() does not copy one).
FLUSHER_IDLE_EXIT_S = 0.5
# At exit, wait at most this long for room in a full ring before dropping this process's unsent
# items (multiprocessing.Queue would wait forever here).
EXIT_FLUSH_TIMEOUT_S = 10.0

def _pad8(n: int) -> int:
    return (n + 7) & ~7


_PROTO = pickle.HIGHEST_PROTOCOL
_HEAD, _TAIL, _SUB, _NEXT_ID, _ITEMS, _CAP, _SUB_POS, _HOLDER = range(8)
# threads (over all processes) that may sleep in get() at once, and in put() at once
QUEUE_MAX_WAITERS = 128
_WL = WaitList.size(QUEUE_MAX_WAITERS)
_DATA = _pad8(64 + 2 * _WL)  # ring data starts after the header slots and two wait lists
_REC = struct.Struct("qiiq")  # batch id, item count, flags, payload bytes
_RH = _REC.size
_WRAP, _SPILL = 1, 2



# -- the per-process flusher ------------------------------------------------------------------


class _Flusher:
    """One daemon thread per process that flushes queues whose producers paused.

    It only gets the GIL when the producing thread blocks or at the interpreter's switch
    interval, so in a tight ``put`` loop it rarely runs (the loop flushes full batches itself),
    and after a lone ``put`` it runs at once: batching without a latency timer.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.dirty: dict[int, Queue] = {}  # strong refs: a dropped queue still gets flushed
        self.thread: threading.Thread | None = None
        self.exit_hook_pid = -1

    def schedule(self, q: Queue) -> None:
        with self.lock:
            self.dirty[id(q)] = q
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name="allcores-queue-flusher", daemon=True
                )
                self.thread.start()
            if self.exit_hook_pid != os.getpid():
                # registered lazily: multiprocessing clears the finalizer registry in children
                self.exit_hook_pid = os.getpid()
                util.Finalize(None, self.flush_all, exitpriority=FINALIZE_PRIORITY + 10)
        self.wake.set()

    def unschedule(self, q: Queue) -> None:
        """Forget ``q`` (its buffer is empty), so the flusher holds no reference to it."""
        with self.lock:
            self.dirty.pop(id(q), None)

    def _run(self) -> None:
        while True:
            if not self.wake.wait(FLUSHER_IDLE_EXIT_S):
                with self.lock:
                    if not self.dirty and not self.wake.is_set():
                        self.thread = None
                        return
                continue
            self.wake.clear()
            with self.lock:
                qs = list(self.dirty.values())
                self.dirty.clear()
            for q in qs:
                q._flush(block=True, deadline=None)

    def flush_all(self) -> None:
        with self.lock:
            qs = list(self.dirty.values())
            self.dirty.clear()
        deadline = monotonic() + EXIT_FLUSH_TIMEOUT_S
        for q in qs:
            if not q._flush(block=True, deadline=deadline):
                print(
                    f"allcores: dropped unsent items of {q!r} at exit: its ring stayed full for "
                    f"{EXIT_FLUSH_TIMEOUT_S:.0f} s (is any process still reading it?)",
                    file=sys.stderr,
                )


_flusher = _Flusher()
_live_queues: weakref.WeakSet[Queue] = weakref.WeakSet()


def flush_pending(timeout: float | None = None) -> bool:
    """Send every item this process has put on any Queue and not sent yet.

    For a pool's worker loop, to call after each task (when ``allcores.sync._queue`` is in
    ``sys.modules``): then an item a task put is in the shared ring before the task's result
    goes back, so terminating the pool right after can no longer drop it. Costs one dict look-up
    when nothing is pending. Returns False if some items could not be sent before ``timeout``.
    """
    flusher = _flusher
    if not flusher.dirty:
        return True
    with flusher.lock:
        qs = list(flusher.dirty.values())
    deadline = None if timeout is None else monotonic() + timeout
    ok = True
    for q in qs:
        ok &= q._flush(block=True, deadline=deadline)
        with q._plock:
            if not q._pending and not q._stalled:
                flusher.unschedule(q)
    return ok


def _after_fork_in_child() -> None:
    # Items buffered in the parent belong to the parent (it flushes them); the child must not send
    # them a second time. Locks may have been held by the parent's flusher thread at fork time.
    global _flusher
    _flusher = _Flusher()
    for q in list(_live_queues):
        q._reset_local()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _unlink_spills(prefix: str) -> None:
    for path in glob.glob(f"/dev/shm/{prefix}-x*"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _rebuild_queue(key: str, state: tuple) -> Queue:
    q = _registry.get(key)
    if q is None:
        q = Queue.__new__(Queue)
        q._attach(*state)
        _registry[key] = q
    return q


class Queue:
    """A process-safe FIFO queue that pool tasks can take as an argument.

    A drop-in for ``multiprocessing.Queue`` (``put``/``get`` with ``block`` and ``timeout``,
    raising ``queue.Full``/``queue.Empty``), several times faster for small items because items
    travel in batches, with ``put_many``/``get_many`` for bulk transfers. It pickles, so it
    reaches workers of any pool under fork, spawn and forkserver. Any number of producers and
    consumers; items from one producer thread arrive in the order they were put.

    Example (producer/consumer)::

        q = allcores.Queue(maxsize=10_000)

        def produce(n, q):
            for i in range(n):
                q.put((i, i * i))
            q.put(None)                      # one end marker per producer

        with allcores.Pool(4) as pool:
            pool.starmap_async(produce, [(1000, q)] * 3)
            ended = 0
            while ended < 3:
                item = q.get(timeout=60)
                if item is None:
                    ended += 1

    The creating process owns the queue: its shared memory is removed when that process closes
    or drops it (or exits), so keep it alive while tasks use it.
    """

    def __init__(self, maxsize: int = 0) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize must be >= 0, got {maxsize}")
        self._ring_name, mm, self._secret = create_shm(_DATA + RING_BYTES)
        lock_name, sem, recovery, names = create_mutex()
        slots_name, slots = "", None
        if maxsize:  # counts items anywhere (buffered or in the ring), like multiprocessing
            slots_name, slots = create_semlock(SEMAPHORE, maxsize, maxsize)
            names.append(slots_name)
        self._owner: Owner | None = Owner(self, names, [self._ring_name])
        util.Finalize(self, _unlink_spills, args=(self._ring_name[1:],),
                      exitpriority=FINALIZE_PRIORITY)
        self._names = (lock_name, slots_name)
        self._maxsize = maxsize
        self._setup(mm, sem, recovery, slots)
        self._h[_CAP] = RING_BYTES
        _registry[self._ring_name] = self

    def _attach(self, ring_name: str, names: tuple[str, str], maxsize: int, secret: bytes
                ) -> None:
        self._ring_name, self._names, self._maxsize = ring_name, names, maxsize
        self._owner = None
        self._secret = secret
        # The ring holds pickles: a ring someone else made at this name would run their code
        # in our get(). open_shm refuses anything but the block this handle's secret names.
        mm = open_shm(ring_name, secret)
        lock_name, slots_name = names
        self._setup(
            mm,
            *open_mutex(lock_name),
            open_semlock(SEMAPHORE, maxsize, slots_name) if slots_name else None,
        )

    def _setup(self, mm, sem, recovery, slots) -> None:
        self._mm = mm
        self._h = memoryview(mm)[:64].cast("q")
        self._cwl = WaitList(mm, 64, QUEUE_MAX_WAITERS)  # sleeping in get()
        self._pwl = WaitList(mm, 64 + _WL, QUEUE_MAX_WAITERS)  # sleeping for ring space
        self._sem = sem  # the mutex's semaphore, used directly on the hot path of get()
        ref = weakref.ref(self)
        self._lock = RobustMutex(sem, recovery, self._h, _HOLDER,
                                 repair=lambda: ref()._repair_locked())  # type: ignore[union-attr]
        self._slots = slots
        self._closed = False
        self._reset_local()
        _live_queues.add(self)

    def _reset_local(self) -> None:
        self._pending: list[Any] = []
        self._stalled: list[tuple[bytes, int, int]] = []  # pickled, waiting for ring space
        self._plock = threading.Lock()  # guards _pending
        self._wlock = threading.Lock()  # one flush at a time, so batches keep their order
        self._error: BaseException | None = None  # a flusher-thread failure, raised on next call
        # consumer cache of the head record: (position, item count, record bytes, items)
        self._cache: tuple[int, int, int, list] = (-1, 0, 0, [])

    def __reduce__(self):
        return _rebuild_queue, (
            self._ring_name, (self._ring_name, self._names, self._maxsize, self._secret)
        )

    def __repr__(self) -> str:
        return f"<allcores.Queue {self._ring_name} maxsize={self._maxsize}>"

    # -- producing -----------------------------------------------------------------------------

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj``; with ``maxsize`` set, wait for room (``queue.Full`` on timeout)."""
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        if self._error is not None:
            self._raise_error()
        if self._slots is not None and not self._slots.acquire(False):
            # Full. Our own buffered items may be what fills it: send them before waiting.
            deadline = None if timeout is None else monotonic() + timeout
            if block:
                self._flush(block=True, deadline=deadline)
            remaining = None if deadline is None else max(0.0, deadline - monotonic())
            if not block or not self._slots.acquire(True, remaining):
                raise _stdlib_queue.Full
        with self._plock:
            pending = self._pending
            pending.append(obj)
            n = len(pending)
        if n >= BATCH_ITEMS:
            self._flush(block=False, deadline=None)
            if self._error is not None:
                self._raise_error()
        elif n == 1:
            _flusher.schedule(self)

    def put_nowait(self, obj: Any) -> None:
        self.put(obj, block=False)

    def put_many(self, items: Iterable[Any], block: bool = True, timeout: float | None = None
                 ) -> None:
        """Put every item of ``items``, in order, as few records as possible.

        With ``maxsize`` set and no room left before ``timeout``, the items that fit are put
        and ``queue.Full`` is raised; its ``.put_count`` says how many were put.
        """
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        if self._error is not None:
            self._raise_error()
        items = list(items)
        if self._slots is not None:
            deadline = None if timeout is None else monotonic() + timeout
            done = 0  # items[:done] are in our buffer
            for i in range(len(items)):
                if self._slots.acquire(False):
                    continue
                # Full: send what we have (consumers can only free room for what they see)
                self._extend(items[done:i])
                done = i
                if block:
                    self._flush(block=True, deadline=deadline)
                remaining = None if deadline is None else max(0.0, deadline - monotonic())
                if not block or not self._slots.acquire(True, remaining):
                    self._flush(block=False, deadline=None)
                    err = _stdlib_queue.Full(f"put {i} of {len(items)} items")
                    err.put_count = i  # type: ignore[attr-defined]
                    raise err
            items = items[done:]
        self._extend(items)
        self._flush(block=False, deadline=None)
        if self._error is not None:
            self._raise_error()

    def _extend(self, items: list[Any]) -> None:
        with self._plock:
            self._pending.extend(items)

    def flush(self, timeout: float | None = None) -> None:
        """Make every item this process has put visible to consumers (waits for ring space)."""
        deadline = None if timeout is None else monotonic() + timeout
        if not self._flush(block=True, deadline=deadline):
            raise _stdlib_queue.Full(f"{self!r}: no room in the ring within {timeout} s")
        with self._plock:
            if not self._pending:
                _flusher.unschedule(self)
        if self._error is not None:
            self._raise_error()

    def _raise_error(self) -> None:
        err, self._error = self._error, None
        raise err  # type: ignore[misc]

    def _flush(self, block: bool, deadline: float | None) -> bool:
        """Write pending items; False if some are left (no room and not blocking/deadline)."""
        if not self._wlock.acquire(block):
            # another thread is flushing; it may have checked our buffer already, so make sure
            # the flusher thread comes back for what we just added
            _flusher.schedule(self)
            return False
        try:
            while True:
                records = self._stalled
                if not records:
                    with self._plock:
                        items, self._pending = self._pending, []
                    if not items:
                        return True
                    records = self._encode(items)
                for i, (payload, n, flags) in enumerate(records):
                    if not self._write(payload, n, flags, block, deadline):
                        self._stalled = records[i:]
                        if not block:
                            _flusher.schedule(self)  # it waits for room on our behalf
                        return False
                self._stalled = []
        finally:
            self._wlock.release()

    def _encode(self, items: list[Any]) -> list[tuple[bytes, int, int]]:
        """Pickle items into records: batches of at most BATCH_ITEMS items and max_record bytes."""
        max_record = self._h[_CAP] // MAX_RECORD_FRACTION
        out: list[tuple[bytes, int, int]] = []
        todo = [items[i:i + BATCH_ITEMS] for i in range(0, len(items), BATCH_ITEMS)]
        todo.reverse()
        while todo:
            chunk = todo.pop()
            try:
                payload = pickle.dumps(chunk, _PROTO)
            except Exception as e:
                if len(chunk) > 1:  # find the culprit; keep the rest in order
                    half = len(chunk) // 2
                    todo += [chunk[half:], chunk[:half]]
                    continue
                self._release_slots(1)
                err = pickle.PicklingError(
                    f"cannot put {chunk[0]!r:.200} on {self!r}: {type(e).__name__}: {e}"
                )
                err.__cause__ = e
                if self._error is None:  # raised by this producer's next put/flush/close
                    self._error = err
                continue
            if len(payload) <= max_record:
                out.append((payload, len(chunk), 0))
            elif len(chunk) > 1:
                half = len(chunk) // 2
                todo += [chunk[half:], chunk[:half]]
            else:
                out.append((self._spill(payload), 1, _SPILL))
        return out

    def _spill(self, payload: bytes) -> bytes:
        name = new_name("x").split("-", 1)[1]
        name = f"{self._ring_name}-x{name}"
        fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(payload)
        finally:
            os.close(fd)
        return name.encode()

    def _write(self, payload: bytes, n: int, flags: int, block: bool, deadline: float | None
               ) -> bool:
        nbytes = len(payload)
        need = _RH + _pad8(nbytes)
        h, lock, mm = self._h, self._lock, self._mm
        me = b""
        while True:
            lock.acquire()
            try:
                cap = h[_CAP]
                head, tail = h[_HEAD], h[_TAIL]
                off = tail % cap
                contiguous = cap - off
                skip = contiguous if contiguous < need else 0
                if cap - (tail - head) >= skip + need:
                    if skip:
                        if contiguous >= _RH:
                            _REC.pack_into(mm, _DATA + off, -1, 0, _WRAP, 0)
                        tail += skip
                        off = 0
                    bid = h[_NEXT_ID]
                    h[_NEXT_ID] = bid + 1
                    _REC.pack_into(mm, _DATA + off, bid, n, flags, nbytes)
                    start = _DATA + off + _RH
                    mm[start:start + nbytes] = payload
                    h[_TAIL] = tail + need
                    h[_ITEMS] += n
                    if me:
                        self._pwl.remove(me)
                    self._cwl.wake_all()
                    return True
                if not block:
                    return False
                me, sem = my_semaphore()
                self._pwl.add(me)
            finally:
                lock.release()
            if not sleep_on(sem, deadline):
                with lock:
                    self._pwl.remove(me)
                return False

    def _release_slots(self, n: int) -> None:
        if self._slots is not None:
            for _ in range(n):
                self._slots.release()

    # -- consuming -----------------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return an item; ``queue.Empty`` if none comes (non-blocking/timeout)."""
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        h, sem = self._h, self._sem
        # Fast path: the head record is the one this process already unpickled, so claiming an
        # item is a few integer updates under the mutex (no copy, no unpickling). The mutex is
        # RobustMutex.acquire/release written out, to save two method calls per item.
        pos, n, reclen, items = self._cache
        if not sem.acquire(True, LOCK_CHECK_S):
            self._lock._acquire_slow()
        h[_HOLDER] = _pid[0]
        try:
            hit = h[_ITEMS] and h[_HEAD] == pos
            if hit:
                sub = h[_SUB]
                h[_ITEMS] -= 1
                if sub + 1 < n:
                    h[_SUB] = sub + 1  # one store: the claim is made, or not
                else:
                    # the claim is the HEAD store; SUB only counts for the record at SUB_POS
                    head = pos + reclen
                    h[_HEAD] = head
                    h[_SUB] = 0
                    h[_SUB_POS] = head
                    self._pwl.wake_all()
        finally:
            sem.release()
        if not hit:
            return self._get_slow(1, block, timeout)[0]
        if self._slots is not None:
            self._slots.release()
        return items[sub]

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def get_many(self, max_items: int = BATCH_ITEMS, block: bool = True,
                 timeout: float | None = None) -> list[Any]:
        """Wait for at least one item, then return up to ``max_items`` items at once.

        Raises ``queue.Empty`` if no item came within ``timeout`` (or at once when
        ``block=False``).
        """
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        return self._get_slow(max_items, block, timeout)

    def _get_slow(self, want: int, block: bool, timeout: float | None) -> list[Any]:
        deadline = None if timeout is None or not block else monotonic() + max(0.0, timeout)
        h, lock = self._h, self._lock
        me = b""
        while True:
            lock.acquire()
            try:
                if h[_ITEMS]:
                    if me:
                        self._cwl.remove(me)
                    claims = self._claim_locked(want)
                    break
                if not block:
                    raise _stdlib_queue.Empty
                me, sem = my_semaphore()
                self._cwl.add(me)
            finally:
                lock.release()
            if not sleep_on(sem, deadline):
                lock.acquire()
                try:
                    self._cwl.remove(me)
                    if h[_ITEMS]:  # it arrived just as we timed out
                        claims = self._claim_locked(want)
                        break
                finally:
                    lock.release()
                raise _stdlib_queue.Empty
        out: list[Any] = []
        for pos, n, reclen, flags, data, lo, hi in claims:
            if flags & _SPILL:
                out.append(pickle.loads(self._unspill(data))[0])
                continue
            if isinstance(data, list):
                items = data
            else:
                items = pickle.loads(data)
                if hi < n:  # more of this record left: keep it for the next get()
                    self._cache = (pos, n, reclen, items)
            out.extend(items[lo:hi])
        self._release_slots(len(out))
        return out

    def _claim_locked(self, want: int) -> list[tuple]:
        """Claim up to ``want`` items from the head records (mutex held)."""
        h, mm = self._h, self._mm
        cap = h[_CAP]
        head, sub = h[_HEAD], h[_SUB]
        claims = []
        freed = False
        while want and h[_ITEMS]:
            off = head % cap
            contiguous = cap - off
            if contiguous < _RH:
                head += contiguous
                continue
            _bid, n, flags, nbytes = _REC.unpack_from(mm, _DATA + off)
            if flags & _WRAP:
                head += contiguous
                continue
            reclen = _RH + _pad8(nbytes)
            take = min(want, n - sub)
            cpos, _, _, citems = self._cache
            if cpos == head:
                data: Any = citems
            else:
                start = _DATA + off + _RH
                data = mm[start:start + nbytes]
            claims.append((head, n, reclen, flags, data, sub, sub + take))
            want -= take
            h[_ITEMS] -= take
            sub += take
            if sub == n:
                head += reclen
                sub = 0
                freed = True
        h[_HEAD] = head  # stores in this order: a holder killed between them leaves a state
        h[_SUB] = sub  # that _repair_locked can make consistent (its claims are undone)
        h[_SUB_POS] = head
        if freed:
            self._pwl.wake_all()
        return claims

    def _repair_locked(self) -> None:
        """Make the header consistent after a holder died mid-update (mutex held).

        Stores are ordered so that every intermediate state is either committed or undone:
        a record exists once TAIL moves past it; an item is claimed once SUB (for the record
        at SUB_POS) or HEAD moves past it. ITEMS is derived, so it is recounted here.
        """
        h, mm = self._h, self._mm
        cap, head, tail = h[_CAP], h[_HEAD], h[_TAIL]
        if h[_SUB_POS] != head:
            h[_SUB] = 0
            h[_SUB_POS] = head
        items, pos = 0, head
        while pos < tail:
            off = pos % cap
            contiguous = cap - off
            if contiguous < _RH:
                pos += contiguous
                continue
            _bid, n, flags, nbytes = _REC.unpack_from(mm, _DATA + off)
            if flags & _WRAP:
                pos += contiguous
                continue
            items += n - (h[_SUB] if pos == head else 0)
            pos += _RH + _pad8(nbytes)
        h[_ITEMS] = items
        self._cwl.wake_all()  # let everyone re-check against the repaired state
        self._pwl.wake_all()

    @staticmethod
    def _unspill(name: bytes) -> bytes:
        path = name.decode()
        fd = _posixshmem.shm_open(path, os.O_RDONLY, mode=0o600)
        try:
            check_owner(fd, path, "queue spill file")  # its bytes are unpickled next
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read()
        finally:
            os.close(fd)
            try:
                _posixshmem.shm_unlink(path)
            except OSError:  # not ours to remove (refused above), or gone
                pass
        return data

    # -- state ---------------------------------------------------------------------------------

    def qsize(self) -> int:
        """Items in the queue: those visible to consumers plus this process's unflushed ones."""
        if self._slots is not None:
            return self._maxsize - self._slots._get_value()
        return self._h[_ITEMS] + len(self._pending) + sum(n for _, n, _ in self._stalled)

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return self._slots is not None and self._slots._get_value() == 0

    @property
    def maxsize(self) -> int:
        return self._maxsize

    def close(self, timeout: float | None = None) -> None:
        """Flush this process's items, then stop using the queue here.

        In the creating process this also removes the queue's names from the system: processes
        that already hold the queue keep using it, but it can no longer be sent to new tasks.
        """
        if self._closed:
            return
        try:
            self.flush(timeout)
        finally:
            self._closed = True
            if self._owner is not None:
                self._owner.release()
                _unlink_spills(self._ring_name[1:])

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- Pipe ---------------------------------------------------------------------------------------


class Connection:
    """One end of a :func:`Pipe`: ``send``/``recv`` objects, ``poll`` for readiness."""

    def __init__(self, inbox: Queue | None, outbox: Queue | None) -> None:
        self._inbox, self._outbox = inbox, outbox
        self._closed = False

    def __reduce__(self):
        return Connection, (self._inbox, self._outbox)

    @property
    def readable(self) -> bool:
        return self._inbox is not None

    @property
    def writable(self) -> bool:
        return self._outbox is not None

    @property
    def closed(self) -> bool:
        return self._closed

    def _check(self, box: Queue | None, what: str) -> Queue:
        if self._closed:
            raise OSError("connection is closed")
        if box is None:
            raise OSError(f"connection is {'write' if what == 'read' else 'read'}-only")
        return box

    def send(self, obj: Any) -> None:
        """Send ``obj`` (visible to the other end when this returns)."""
        box = self._check(self._outbox, "write")
        box._extend([obj])
        box.flush()

    def send_bytes(self, buf: bytes | bytearray | memoryview) -> None:
        self.send(bytes(buf))

    def recv(self) -> Any:
        """Receive the next object (blocks)."""
        return self._check(self._inbox, "read").get()

    recv_bytes = recv

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether an object is waiting; waits up to ``timeout`` (``None``: forever)."""
        box = self._check(self._inbox, "read")
        deadline = None if timeout is None else monotonic() + max(0.0, timeout)
        h, lock = box._h, box._lock
        me, sem = my_semaphore()
        while True:
            with lock:
                if h[_ITEMS]:
                    box._cwl.remove(me)
                    return True
                if deadline is not None and deadline <= monotonic():
                    box._cwl.remove(me)
                    return False
                box._cwl.add(me)
            sleep_on(sem, deadline)

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:
    """A pair of connected ends that pool tasks can take as arguments.

    Like ``multiprocessing.Pipe``: with ``duplex=True`` both ends send and receive; with
    ``duplex=False`` the first end only receives and the second only sends. Each direction is a
    :class:`Queue`, so the ends pickle and any number of processes may use them.

    Example (a worker reports progress to the parent)::

        parent_end, child_end = allcores.Pipe(duplex=False)

        def work(items, child_end):
            for i, x in enumerate(items):
                process(x)
                child_end.send(("progress", i))
    """
    a_to_b = Queue()
    if not duplex:
        return Connection(a_to_b, None), Connection(None, a_to_b)
    b_to_a = Queue()
    return Connection(b_to_a, a_to_b), Connection(a_to_b, b_to_a)
