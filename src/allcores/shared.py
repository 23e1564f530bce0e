"""Share once, use everywhere: a big array placed in shared memory, handed to tasks by name.

``allcores.share(array)`` copies the array once into a POSIX shared-memory segment and returns a
:class:`SharedArray`. The handle pickles as a tiny reference (segment name, dtype, shape), so
passing it to a thousand tasks costs a thousand tiny messages; in a task ``handle.array`` maps
the segment without copying::

    import numpy as np, allcores

    data = allcores.share(np.random.rand(100_000_000))           # 800 MB, copied once

    def part_sum(args):
        handle, lo, hi = args
        return handle.array[lo:hi].sum()                         # a view, no copy

    total = sum(allcores.map(part_sum, [(data, i, i + 10**7) for i in range(0, 10**8, 10**7)]))

Rules:

* **Read-only by default.** Tasks get a read-only view; writing raises numpy's
  ``ValueError: assignment destination is read-only``. Pass ``writable=True`` (or create an
  output with :meth:`SharedArray.empty` / :meth:`SharedArray.zeros`) to let tasks write.
* **Writable arrays: disjoint slices, no locking.** Each task writes its own slice; nothing
  stops two tasks writing the same element (the last write wins, torn values are possible for
  overlapping multi-element writes). Writes are visible to the parent once the task has
  returned (its result reaching the parent orders them).
* **Lifetime.** The process that created the handle owns the segment. ``handle.close()``,
  leaving its ``with`` block, garbage collection of the handle, or interpreter exit (also after
  Ctrl-C) unlinks the name; views already made stay valid until dropped. A worker crash never
  leaks a segment (workers only map, never own). If the owner is SIGKILLed, the next pool start
  removes the segment (``sweep_stale``). Works under fork, spawn and forkserver alike.
* **Only the share its handle names.** A handle carries a random secret that the segment
  holds after the array's bytes; mapping checks that the segment is this user's, private
  (no group/other permission bit) and ends with that secret. A segment someone else made at
  a released name (another user, another container, a recycled pid) is refused with
  :class:`~allcores.errors.ForeignObjectError`, never mapped (docs/security.md).
* **Workers keep their map** of a share between tasks (up to 8 shares, most recent first), so
  repeated maps over one share pay the page-table cost once. A worker lets go of a closed
  share's memory the next time it attaches any share, goes idle, or exits.
"""

from __future__ import annotations

import collections
import hmac
import mmap
import os
import secrets
import sys
import weakref
from typing import TYPE_CHECKING, Any

from allcores._engine import shm

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SharedArray", "share"]

# Segments of shares are named allcores-<uid>-<pidns>-<pid>-s<n> (transport messages: ...-<n>).
_SHARE_TAG = "s"
# The segment holds the array's bytes, then this many bytes of the handle's random secret.
_SECRET_BYTES = 16

# Maps kept open in this process, most recently used last, so that every task a worker runs
# on the same share reuses one map and its page tables: re-mapping a share per task costs a
# page fault per 64 KiB touched, twice the time of summing it (measured: 256 MiB sum 28 ms,
# first touch of a fresh map 40-60 ms more). A map is dropped when its segment is gone (the
# owner closed it), checked on every attach and by forget_closed_maps(), or when more than
# _MAP_CACHE_SIZE shares are in use.
_MAP_CACHE_SIZE = 8
# (name, writable) -> (inode, map): the inode tells a closed share from a new one that reuses
# its name (a recycled pid), so a stale map is never handed out.
_maps: collections.OrderedDict[tuple[str, bool], tuple[int, mmap.mmap]] = collections.OrderedDict()


def _inode(name: str) -> int | None:
    try:
        return os.stat(shm.segment_path(name)).st_ino
    except FileNotFoundError:
        return None


def forget_closed_maps() -> None:
    """Drop cached maps of shares whose owner has closed them, so their memory is freed.

    Cheap (one stat per cached share); the engine calls it when a worker goes idle.
    """
    for key, (ino, _) in list(_maps.items()):
        if _inode(key[0]) != ino:
            del _maps[key]


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is in every extra that uses this
        raise ImportError(
            "SharedArray.array needs numpy: pip install 'allcores[numpy]' "
            "(or use handle.buffer for a memoryview)"
        ) from None
    return numpy


def _is_ndarray(obj: Any) -> bool:
    np = sys.modules.get("numpy")  # never import numpy just to ask
    return np is not None and isinstance(obj, np.ndarray)


def _forget(name: str) -> None:
    """Drop this process's cached maps of one share (views already taken stay valid)."""
    _maps.pop((name, True), None)
    _maps.pop((name, False), None)


def _release(name: str, owner_pid: int) -> None:
    # A forked child inherits the owner's handle object (and this finalizer): only the owner
    # may unlink, or a child dropping its copy would pull the segment from under the parent.
    if os.getpid() == owner_pid:
        shm.discard([name])
        _forget(name)


class SharedArray:
    """A numpy array (or bytes) in shared memory; pickles as a reference, maps without copying.

    Make one with :func:`share` (copies an existing array in once) or :meth:`empty` /
    :meth:`zeros` (an output that tasks fill). In any process, ``.array`` (also
    ``np.asarray(handle)``, ``handle[i]``, ``len(handle)``) is a view on the shared pages.

    Example::

        out = allcores.SharedArray.zeros((16, 1000))             # writable output
        def fill(i):
            out.array[i] = i                                     # each task its own row
        allcores.map(fill, range(16))
        assert out.array[15, 0] == 15                            # seen by the parent
        out.close()
    """

    __slots__ = (
        "__weakref__",
        "_closed",
        "_dtype",
        "_finalizer",
        "_map",
        "_name",
        "_owner_pid",
        "_secret",
        "_shape",
        "_writable",
    )

    def __init__(
        self,
        name: str,
        dtype: Any,
        shape: tuple[int, ...],
        writable: bool,
        owner_pid: int,
        secret: bytes,
        owns: bool = False,
    ) -> None:
        # Private: use share(), SharedArray.empty() or SharedArray.zeros().
        self._name = name
        self._secret = secret
        self._dtype = dtype  # a numpy dtype, or None for a share of bytes
        self._shape = tuple(shape)
        self._writable = writable
        self._owner_pid = owner_pid
        self._map: mmap.mmap | None = None
        self._closed = False
        self._finalizer: weakref.finalize | None = None
        if owns:
            # Only the handle that created the segment frees it (a copy unpickled in the same
            # process, e.g. a handle returned by a task, must not). Runs on close(), on garbage
            # collection, and at interpreter exit (atexit): a normal exit or Ctrl-C in the owner
            # leaves nothing in /dev/shm.
            self._finalizer = weakref.finalize(self, _release, name, owner_pid)

    # ----------------------------------------------------------------- construction

    @classmethod
    def empty(
        cls, shape: int | tuple[int, ...], dtype: Any = float, *, writable: bool = True
    ) -> SharedArray:
        """A new shared array for tasks to fill (writable by default).

        Shared memory starts as zero pages, so ``empty`` is ``zeros`` at no extra cost.

        Example::

            out = allcores.SharedArray.empty((1000, 3), "float32")
        """
        np = _numpy()
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise TypeError(_OBJECT_DTYPE_MSG.format(dt))
        shp = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
        nbytes = int(np.prod(shp, dtype=np.int64)) * dt.itemsize
        name, fd = shm.new_segment(nbytes + _SECRET_BYTES, tag=_SHARE_TAG)
        secret = secrets.token_bytes(_SECRET_BYTES)
        try:
            os.pwrite(fd, secret, nbytes)
        except BaseException:
            shm.discard([name])
            raise
        finally:
            os.close(fd)
        return cls(name, dt, shp, writable, os.getpid(), secret, owns=True)

    @classmethod
    def zeros(
        cls, shape: int | tuple[int, ...], dtype: Any = float, *, writable: bool = True
    ) -> SharedArray:
        """A new zero-filled shared array (see :meth:`empty`)."""
        return cls.empty(shape, dtype, writable=writable)

    # ----------------------------------------------------------------- access

    @property
    def name(self) -> str:
        """The segment's name in /dev/shm (while open)."""
        return self._name

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return _numpy().dtype("u1") if self._dtype is None else self._dtype

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self._shape:
            n *= s
        return n * (1 if self._dtype is None else self._dtype.itemsize)

    @property
    def closed(self) -> bool:
        return self._closed

    def _mapped(self) -> mmap.mmap | None:
        if self._map is not None:
            return self._map
        if self._closed:
            raise ValueError(f"SharedArray {self._name!r} is closed")
        nbytes = self.nbytes
        if nbytes == 0:
            return None  # mmap cannot map zero bytes; the views below are empty
        key = (self._name, self._writable)
        cached = _maps.get(key)
        mm = None
        if cached is not None:
            if _inode(self._name) == cached[0]:
                mm = cached[1]
                _maps.move_to_end(key)
            else:
                del _maps[key]  # closed by its owner: map afresh, or fail clearly below
        if mm is None:
            forget_closed_maps()
            try:
                fd = os.open(
                    shm.segment_path(self._name),
                    (os.O_RDWR if self._writable else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC,
                )
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"shared array {self._name!r} no longer exists: its owner (pid "
                    f"{self._owner_pid}) closed it or exited. Keep the handle open (e.g. a "
                    "`with` block around the map) until every task that uses it has finished."
                ) from None
            except OSError as exc:  # ELOOP: a link planted at the name
                raise shm.foreign_error(self._name, "shared array") from exc
            try:
                # ours, private, and the very share this handle names (not a segment made
                # at the name after the owner closed it): one fstat and one pread per map
                shm.check_owner(fd, self._name, "shared array")
                if not hmac.compare_digest(os.pread(fd, _SECRET_BYTES, nbytes), self._secret):
                    raise shm.foreign_error(self._name, "shared array")
                access = mmap.ACCESS_WRITE if self._writable else mmap.ACCESS_READ
                mm = mmap.mmap(fd, nbytes, access=access)
                ino = os.fstat(fd).st_ino
            finally:
                os.close(fd)
            _maps[key] = (ino, mm)
            while len(_maps) > _MAP_CACHE_SIZE:
                _maps.popitem(last=False)
        self._map = mm
        return mm

    @property
    def array(self) -> np.ndarray:
        """A numpy view on the shared pages (read-only unless the share is writable)."""
        np = _numpy()
        mm = self._mapped()
        if mm is None:
            arr = np.empty(self._shape, self.dtype)
        else:
            arr = np.frombuffer(mm, dtype=self.dtype, count=self.nbytes // self.dtype.itemsize)
            arr = arr.reshape(self._shape)
        if not self._writable:
            arr.flags.writeable = False
        return arr

    @property
    def buffer(self) -> memoryview:
        """A flat memoryview of the bytes (no numpy needed); read-only unless writable."""
        mm = self._mapped()
        view = memoryview(b"") if mm is None else memoryview(mm)
        return view if self._writable else view.toreadonly()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        arr = self.array
        if dtype is not None and arr.dtype != dtype:
            return arr.astype(dtype)
        return arr.copy() if copy else arr

    def __getitem__(self, key: Any) -> Any:
        return self.array[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        if not self._writable:
            raise ValueError(
                "this SharedArray is read-only: create it with share(arr, writable=True) or "
                "SharedArray.empty(...) to let tasks write into it"
            )
        self.array[key] = value

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d SharedArray")
        return self._shape[0]

    def __bytes__(self) -> bytes:
        return bytes(self.buffer)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("writable" if self._writable else "read-only")
        dt = "bytes" if self._dtype is None else str(self._dtype)
        return f"<SharedArray {self._name} shape={self._shape} dtype={dt} {state}>"

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Free the segment (owner) or drop this process's map of it (anyone else).

        Arrays already taken from ``.array`` stay valid: the memory goes away with the last
        view. Closing twice is fine.
        """
        self._closed = True
        self._map = None
        _forget(self._name)
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> SharedArray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self._closed:
            raise ValueError(f"cannot send closed SharedArray {self._name!r} to a task")
        return (
            _attach,
            (self._name, self._dtype, self._shape, self._writable, self._owner_pid, self._secret),
        )


def _attach(
    name: str, dtype: Any, shape: tuple[int, ...], writable: bool, owner_pid: int, secret: bytes
) -> SharedArray:
    # Mapping is lazy: a task that receives a handle but never reads it costs no syscall.
    return SharedArray(name, dtype, shape, writable, owner_pid, secret)


_OBJECT_DTYPE_MSG = (
    "cannot share an array of dtype {0}: it holds pointers to Python objects that only mean "
    "something in one process. Convert it to a fixed-size dtype first (numbers, fixed-length "
    "strings such as 'U20'), or pass it to tasks as an ordinary argument."
)


def share(obj: Any, writable: bool = False) -> SharedArray:
    """Copy a numpy array (or bytes-like) once into shared memory; return a :class:`SharedArray`.

    The handle travels to tasks as a tiny reference; ``handle.array`` in a task is a view on
    the same pages, read-only unless ``writable=True``.

    Example::

        table = allcores.share(np.load("big.npy"))
        allcores.map(lambda i: table.array[i].sum(), range(len(table)))
        table.close()            # or `with allcores.share(...) as table:`
    """
    if isinstance(obj, SharedArray):
        return obj
    if _is_ndarray(obj):
        np = sys.modules["numpy"]
        if obj.dtype.hasobject:
            raise TypeError(_OBJECT_DTYPE_MSG.format(obj.dtype))
        arr = np.ascontiguousarray(obj)
        flat: memoryview = memoryview(arr.reshape(-1).view(np.uint8))
        dtype, shape = arr.dtype, arr.shape
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        flat = memoryview(obj).cast("B") if isinstance(obj, memoryview) else memoryview(obj)
        dtype, shape = None, (flat.nbytes,)
    else:
        raise TypeError(
            f"share() takes a numpy array or a bytes-like object, not {type(obj).__name__}. "
            "Convert it with numpy.asarray(...) first; other objects can be passed to tasks "
            "as ordinary arguments (big buffers inside them travel through shared memory "
            "automatically)."
        )
    name, fd = shm.new_segment(tag=_SHARE_TAG)
    secret = secrets.token_bytes(_SECRET_BYTES)
    try:
        try:
            shm.write_all(fd, flat)
            shm.write_all(fd, memoryview(secret))
        finally:
            os.close(fd)
    except OSError as exc:
        shm.discard([name])
        raise shm.no_space_error(flat.nbytes, exc) from exc
    except BaseException:
        shm.discard([name])
        raise
    return SharedArray(name, dtype, shape, writable, os.getpid(), secret, owns=True)
