"""The zero-copy transport: big buffers travel through POSIX shared memory, not the pipe.

Every message the engine sends goes through :func:`pack` on one side and :func:`unpack` on the
other. Small messages are plain pickle bytes (no header, no extra cost). Big buffers (numpy
arrays, ``PickleBuffer``, large bytes/bytearray/memoryview) are lifted out of the pickle and each
copied once into a fresh segment in ``/dev/shm``; only the segment names cross the pipe::

    sender                                 pipe                          receiver
    ------                                 ----                          --------
    pack(obj)                                                            unpack(data)
      pickle protocol 5 ──> small buffers stay in-band
                        └─> buffer >= SHM_THRESHOLD                        open + check owner
                            os.write into /dev/shm/allcores-<ident>-<n>      + mmap + unlink  │
      (data, [names]) ─────────────── header + pickle ────────────────>      └─> numpy array /
                                                                              memoryview on the map

Ownership moves with the message: once :func:`unpack` has mapped a segment it unlinks the name,
so the memory lives exactly as long as the objects that view it (the mmap is their base) and
nothing is left in ``/dev/shm``. A message that is never unpacked (the receiving worker died,
the task was cancelled) must be freed by the sender with :func:`discard`; segments of a process
that died while packing are found by their name prefix with :func:`sweep`, and those of any dead
process with :func:`sweep_stale`.

We write the files ourselves (``os.open(O_CREAT | O_EXCL)``) instead of using
``multiprocessing.shared_memory``: its resource tracker prints leak warnings for segments that a
different process unlinks, which is exactly the hand-over this transport does on every message.

Names and other users (docs/security.md). ``/dev/shm`` is shared by every user of the machine,
and by containers that mount the host's. A name is ``allcores-<uid>-<pidns>-<pid>-<tag><n>``:

- ``uid`` (the effective one): users never collide, and a sweep only considers its own user's
  names. Another user's leftovers are never touched (they could not be removed anyway: the
  sticky bit says so, and a ``PermissionError`` there used to stop every pool).
- ``pidns``: the inode of this process's pid namespace (``/proc/self/ns/pid``), in hex. "Is this
  segment's creator dead?" is answered with ``kill(pid, 0)``, which only means something inside
  one pid namespace: a container sharing ``/dev/shm`` has its own pid 1234. So a sweep only
  judges names from its own namespace and leaves the others to their own runs. We chose this
  over an owner-held ``flock``: transport segments are handed from process to process (the
  creator closes its fd at once), so a lock would need one more file and fd per process, and
  the name already carries everything the decision needs at no cost per message.
- Every open of an existing name (a received segment, a recycled one) checks with ``fstat`` on
  the fd it holds that the file is owned by this user and has no group/other permission bit;
  anything else is a :class:`~allcores.errors.ForeignObjectError`, never data.
"""

from __future__ import annotations

import io
import itertools
import mmap
import os
import pickle
import struct
import sys
from collections.abc import Iterable
from typing import Any

__all__ = [
    "SEGMENT_PREFIX",
    "SHM_DIR",
    "SHM_THRESHOLD",
    "discard",
    "is_shm_message",
    "new_segment",
    "no_space_error",
    "pack",
    "segment_path",
    "segments_of",
    "sweep",
    "sweep_stale",
    "unpack",
    "write_all",
]

# Buffers at least this big go through shared memory. Measured one way between two processes,
# median per message (benchmarks/w4_w5_data_plane.py --only T, 2-core Linux VM, quiet):
#   64 KiB pipe 16 us / shm 42 us;  128 KiB 24 / 61;  256 KiB 182 / 121;  1 MiB 751 / 382;
#   16 MiB 19.3 ms / 8.7 ms.
# Below ~128 KiB a segment's four syscalls and fresh pages cost more than the pipe; from 256 KiB
# on the pipe's 64 KiB round trips lose, and lose more when the cores are busy (two spinning
# processes: 1 MiB pipe 2.1 ms / shm 0.9 ms).
SHM_THRESHOLD = 256 * 1024

SHM_DIR = "/dev/shm"
SEGMENT_PREFIX = "allcores-"

# A message carrying segments starts with this magic; a plain pickle starts with PROTO (0x80),
# so the common small message needs no header at all.
_MAGIC = b"ACs1"
_HEAD = struct.Struct("<4sIB")  # magic, number of segments, flags
_FLAG_PERSISTENT = 1  # the pickle holds our persistent ids: unpickle with _ShmUnpickler
_SEG = struct.Struct("<QBH")  # size, kind, name length (name bytes follow)

# What a segment holds, so unpack knows what to rebuild.
_KIND_BUFFER = 0  # a pickle-5 out-of-band buffer (numpy, PickleBuffer): handed to pickle.loads
_KIND_BYTES = 1  # a bytes object lifted out by persistent_id
_KIND_BYTEARRAY = 2
_KIND_MEMORYVIEW = 3
# Set on a segment's kind when its sender wants the pages back: the receiver maps it without
# unlinking the name and, once no view of it is left, reports it free (see SegmentPool). Fresh
# tmpfs pages cost ~1.4 us each to allocate and zero, three times the cost of overwriting pages
# that already exist; recycling is what lets big arguments cross at memory-copy speed.
_KIND_RECYCLE = 0x80

# Linux write(2)/read(2) move at most this many bytes per call.
_MAX_IO = 0x7FFFF000

# The persistent-id tag, so a user's own persistent ids could never be mistaken for ours.
_PID_TAG = "allcores.shm"

_counter = itertools.count()

# Opening an existing segment never follows a symbolic link (someone else's, planted at a name).
_O_EXISTING = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


# --------------------------------------------------------------------------- names


def pid_namespace() -> int:
    """The inode of this process's pid namespace (0 where /proc does not say)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # pragma: no cover - not Linux, or /proc not mounted
        return 0


_ident_cache: list[Any] = [-1, -1, ""]  # pid, euid, "<uid>-<pidns>"


def identity() -> str:
    """``"<euid>-<pidns hex>"``: who may sweep a name, and in which pid namespace its pid counts.

    Cached per process and effective uid (a forked child that calls setuid gets its own).
    """
    pid, euid = os.getpid(), os.geteuid()
    cache = _ident_cache
    if cache[0] != pid or cache[1] != euid:
        # the namespace in hex: shorter, and no digit run that tools (or older test
        # suites) would take for a pid
        cache[:] = [pid, euid, f"{euid}-{pid_namespace():x}"]
    return cache[2]


def check_owner(fd: int, name: str, what: str = "shared-memory segment") -> os.stat_result:
    """``fstat`` an fd we just opened by name: it must be ours and private, else
    :class:`~allcores.errors.ForeignObjectError`. One syscall on an fd already held."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise foreign_error(name, what, st)
    return st


def foreign_error(name: str, what: str, st: os.stat_result | None = None) -> Exception:
    from allcores.errors import ForeignObjectError

    if st is None:
        detail = "its secret does not match the handle that names it"
    elif st.st_uid != os.geteuid():
        detail = f"it belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})"
    else:
        detail = f"its mode {st.st_mode & 0o777:o} lets other users in"
    return ForeignObjectError(
        f"refusing the {what} {name!r}: {detail}. The name was most likely released by its "
        "owner and then created again by another user, container or process; nothing was "
        "read from it (docs/security.md)."
    )


# --------------------------------------------------------------------------- segments


def segment_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def new_segment(size: int = 0, *, tag: str = "") -> tuple[str, int]:
    """Create an empty segment (``size`` zero bytes) and return its name and an open fd.

    Names are ``allcores-<uid>-<pidns>-<pid>-<tag><n>`` (see the module docstring): they let
    :func:`sweep` and :func:`sweep_stale` find what a dead process of this user, in this pid
    namespace, left behind.
    """
    prefix = f"{SEGMENT_PREFIX}{identity()}-{os.getpid()}-{tag}"
    while True:
        # pid + counter is unique among live processes; O_EXCL guards against a stale file left
        # by an earlier process that had the same pid (or one planted by someone else).
        name = f"{prefix}{next(_counter)}"
        try:
            fd = os.open(
                segment_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
            )
        except FileExistsError:
            continue
        break
    if size:
        try:
            # Reserve the pages now: a sparse file in a full /dev/shm would make the first
            # write through a map die of SIGBUS instead of raising here.
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            os.close(fd)
            _unlink(name)
            raise no_space_error(size, exc) from exc
        except BaseException:
            os.close(fd)
            _unlink(name)
            raise
    return name, fd


def no_space_error(size: int, exc: OSError) -> OSError:
    """The error for a segment that /dev/shm cannot hold, saying how to make room."""
    try:
        st = os.statvfs(SHM_DIR)
        avail, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        free = f"{avail / 2**20:.0f} MiB free of {total / 2**20:.0f} MiB"
    except OSError:
        free = "size unknown"
    return OSError(
        exc.errno,
        f"cannot place {size / 2**20:.1f} MiB in shared memory ({SHM_DIR}: {free}): "
        f"{exc.strerror}. Make /dev/shm larger (docker run --shm-size=8g, or "
        "mount -o remount,size=... /dev/shm) or share less at once.",
    )


def write_all(fd: int, data: memoryview) -> None:
    """write(2) all of a flat byte view, in the chunks Linux allows."""
    done = 0
    nbytes = len(data)
    while done < nbytes:
        n = os.write(fd, data[done : done + _MAX_IO])
        if n <= 0:
            raise OSError(28, "No space left on device")  # ENOSPC; write(2) wrote nothing
        done += n


def _create_segment(data: memoryview) -> str:
    """Copy ``data`` (a flat byte view) into a fresh segment and return its name."""
    name, fd = new_segment()
    try:
        # write(2) copies straight into tmpfs pages: measured faster than ftruncate + mmap +
        # memcpy, which pays a page fault for every fresh page on the sending side.
        write_all(fd, data)
    except BaseException:
        os.close(fd)
        _unlink(name)
        raise
    os.close(fd)
    return name


def _overwrite_segment(name: str, data: memoryview) -> None:
    """Copy ``data`` over the start of an existing segment, whose pages are already there."""
    fd = os.open(segment_path(name), _O_EXISTING)
    try:
        check_owner(fd, name)
        done = 0
        while done < len(data):
            n = os.pwrite(fd, data[done : done + _MAX_IO], done)
            if n <= 0:
                raise OSError(28, "No space left on device")
            done += n
    finally:
        os.close(fd)


class SegmentPool:
    """Segments a receiver has let go of, kept by their sender to be written again.

    Only the manager thread uses it. ``take`` hands out the smallest free segment that fits (and
    is not more than twice the size, so a small message never pins a huge segment); ``give``
    takes back the ones a worker reported free, unlinking the oldest past ``max_bytes``.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._free: list[tuple[int, str]] = []  # (capacity, name), oldest first
        self._bytes = 0

    def take(self, size: int) -> str | None:
        best = None
        for i, (capacity, _) in enumerate(self._free):
            if size <= capacity <= 2 * size and (best is None or capacity < self._free[best][0]):
                best = i
        if best is None:
            return None
        capacity, name = self._free.pop(best)
        self._bytes -= capacity
        return name

    def give(self, names: Iterable[str]) -> None:
        for name in names:
            try:
                capacity = os.stat(segment_path(name)).st_size
            except OSError:
                continue
            self._free.append((capacity, name))
            self._bytes += capacity
        while self._bytes > self.max_bytes and self._free:
            capacity, name = self._free.pop(0)
            self._bytes -= capacity
            _unlink(name)

    def clear(self) -> None:
        discard([name for _, name in self._free])
        self._free.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._free)


def release_kept(kept: list[tuple[str, Any, Any]]) -> list[str]:
    """After a message's objects are gone, close the maps that ``unpack(keep=...)`` kept.

    Returns the names whose maps closed (nothing views them any more): the sender may write their
    pages again. A segment still viewed (a task kept its argument) is unlinked instead: its
    memory lives on with the view, and the sender does not get it back.
    """
    free = []
    for name, view, mm in kept:
        try:
            view.release()
            mm.close()
        except BufferError:
            _unlink(name)
            continue
        free.append(name)
    kept.clear()
    return free


def _map_kept(name: str, size: int, kept: list) -> memoryview:
    """Map a recyclable segment without unlinking its name; remember the map in ``kept``."""
    fd = _open_received(name)
    try:
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    view = memoryview(mm)
    kept.append((name, view, mm))
    return view


def _unlink(name: str) -> None:
    try:
        os.unlink(segment_path(name))
    except OSError:  # gone already, or not ours to remove (the sticky bit of /dev/shm)
        pass


def _open_received(name: str) -> int:
    try:
        fd = os.open(segment_path(name), _O_EXISTING)
    except FileNotFoundError:
        raise RuntimeError(
            f"shared-memory segment {name!r} is gone before it was read: it was consumed "
            "twice or discarded by its sender (is something else cleaning /dev/shm?)"
        ) from None
    except OSError as exc:  # ELOOP: a link planted at the name
        raise foreign_error(name, "shared-memory segment") from exc
    try:
        check_owner(fd, name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_and_unlink(name: str) -> int:
    fd = _open_received(name)
    _unlink(name)  # the open fd (then the map) keeps the memory; the name is no longer needed
    return fd


def _map_segment(name: str, size: int) -> memoryview:
    """Map a received segment read-write and unlink its name; the view keeps the map alive."""
    fd = _open_and_unlink(name)
    try:
        if size == 0:
            return memoryview(bytearray())
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    return memoryview(mm)


def _read_segment(name: str, size: int, into: bytearray | None = None) -> bytes | bytearray:
    """Read a received segment into private memory (bytes/bytearray own their memory)."""
    fd = _open_and_unlink(name)
    try:
        if into is None and size <= _MAX_IO:
            out: bytes | bytearray = os.read(fd, size)
        else:
            out = bytearray(size) if into is None else into
            view = memoryview(out)
            done = 0
            while done < size:
                n = os.readv(fd, [view[done : done + _MAX_IO]])
                if n <= 0:
                    break  # shorter than announced: reported below
                done += n
            out = out if done == size else out[:done]
            if into is None:
                out = bytes(out)
    finally:
        os.close(fd)
    if len(out) != size:
        raise RuntimeError(f"shared-memory segment {name!r} is shorter than announced")
    return out


def discard(names: Iterable[str]) -> None:
    """Free segments of a message that was packed but will never be unpacked.

    The engine calls this when the receiving worker died or the message was dropped. Names that
    are already gone (the receiver got to them first) are ignored.

    Example::

        data, names = pack(task)
        try:
            conn.send_bytes(data)
        except BrokenPipeError:
            discard(names)
    """
    for name in names:
        _unlink(name)


def sweep(pid: int) -> list[str]:
    """Unlink every segment that the *dead* process ``pid`` left behind; return their names.

    Covers both its unconsumed messages and its ``allcores.share()`` segments. Call it for a
    worker that died, *after* draining its result pipe (messages still in the pipe refer to
    segments that must survive until they are unpacked). Never call it for a live process:
    its shares would vanish under it. ``pid`` is a child of this process: same user, same pid
    namespace, so its names carry this process's identity.
    """
    prefix = f"{SEGMENT_PREFIX}{identity()}-{pid}-"
    gone = []
    for name in _list_segments():
        if name.startswith(prefix):
            _unlink(name)
            gone.append(name)
    return gone


def sweep_stale() -> list[str]:
    """Unlink segments whose creating process no longer exists (left by a SIGKILLed run).

    Only this user's names from this pid namespace are judged (see the module docstring), and
    only those whose pid is not alive; an error on one name never stops the sweep.
    """
    prefix = f"{SEGMENT_PREFIX}{identity()}-"
    gone = []
    for name in _list_segments():
        if not name.startswith(prefix):
            continue  # another user's, another container's, or an older allcores's
        head = name[len(prefix) :].split("-", 1)[0]
        if head.isdigit() and not _pid_alive(int(head)):
            _unlink(name)
            gone.append(name)
    return gone


def _list_segments() -> list[str]:
    try:
        return [n for n in os.listdir(SHM_DIR) if n.startswith(SEGMENT_PREFIX)]
    except OSError:
        return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, owned by someone else
        return True
    return True


# --------------------------------------------------------------------------- pack


class _Segments:
    """The segments one pack() call creates, in the order unpack() will meet them."""

    __slots__ = ("entries", "persistent", "reuse", "threshold")

    def __init__(self, threshold: int, reuse: SegmentPool | None = None) -> None:
        self.threshold = threshold
        self.reuse = reuse
        self.entries: list[tuple[str, int, int]] = []  # (name, size, kind)
        self.persistent = False  # did the pickle use our persistent ids (even without segments)?

    def add(self, data: memoryview, kind: int) -> int | None:
        """Copy ``data`` into a segment; None when shared memory cannot take it."""
        name = None
        if self.reuse is not None:
            kind |= _KIND_RECYCLE
            name = self.reuse.take(len(data))
            if name is not None:
                try:
                    _overwrite_segment(name, data)
                except OSError:
                    _unlink(name)
                    name = None
        if name is None:
            try:
                name = _create_segment(data)
            except OSError:
                # /dev/shm full (docker's default is 64 MiB), missing, or out of file
                # descriptors: the buffer goes through the pipe instead, slower but correct.
                return None
        self.entries.append((name, len(data), kind))
        return len(self.entries) - 1

    def buffer_callback(self, buf: pickle.PickleBuffer) -> bool:
        """pickle's buffer_callback: return True to keep the buffer in-band."""
        try:
            raw = buf.raw()  # flat bytes; raises for non-contiguous buffers
        except BufferError:
            return True
        if raw.nbytes < self.threshold:
            return True
        return self.add(raw, _KIND_BUFFER) is None

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.entries]


def _persistent_id(self: Any, obj: Any) -> Any:
    """Lift large bytes/bytearray/memoryview out of the pickle (pickle never calls
    reducer_override for bytes or bytearray, and cannot pickle memoryview at all)."""
    tp = type(obj)
    if tp is bytes or tp is bytearray:
        segs = self._allcores_segments
        if len(obj) < segs.threshold:
            return None
        index = segs.add(memoryview(obj), _KIND_BYTES if tp is bytes else _KIND_BYTEARRAY)
        if index is None:
            return None  # no room in shared memory: in-band
        segs.persistent = True
        return (_PID_TAG, index)
    if tp is memoryview:
        segs = self._allcores_segments
        segs.persistent = True
        meta = (obj.format, obj.shape, obj.readonly)
        if obj.nbytes >= segs.threshold and obj.c_contiguous:
            index = segs.add(obj.cast("B"), _KIND_MEMORYVIEW)
            if index is not None:
                return (_PID_TAG, index, *meta)
        return (_PID_TAG, obj.tobytes(), *meta)  # small or strided: a copy in-band
    return None


_shm_picklers: dict[type, type] = {}


def _shm_pickler(base: type) -> type:
    cls = _shm_picklers.get(base)
    if cls is None:
        cls = type(f"_Shm{base.__name__}", (base,), {"persistent_id": _persistent_id})
        _shm_picklers[base] = cls
    return cls


def pack(
    obj: Any,
    *,
    threshold: int | None = None,
    pickler: type[pickle.Pickler] | None = None,
    reuse: SegmentPool | None = None,
) -> tuple[bytes, list[str]]:
    """Serialize ``obj`` for another process; big buffers go into shared memory.

    Returns the bytes to send and the names of the segments created (empty for a message without
    big buffers, whose bytes are then a plain pickle). ``pickler`` is the Pickler class to use
    (``pickle.Pickler`` by default; pass ``cloudpickle.Pickler`` for lambdas and closures).
    With ``reuse``, segments come from that pool where one fits and are marked for recycling: a
    receiver that unpacks with ``keep=`` hands them back through :func:`release_kept`.
    On any error the segments created so far are unlinked before the error propagates.

    Example::

        data, names = pack({"x": np.zeros(2**21)})   # 16 MiB array -> one segment
        obj = unpack(data)                            # in another process: zero-copy view
    """
    if threshold is None:
        threshold = SHM_THRESHOLD
    base = pickle.Pickler if pickler is None else pickler
    segs = _Segments(threshold, reuse)
    try:
        try:
            payload = _dump(base, obj, segs)
        except TypeError:
            # e.g. "cannot pickle 'memoryview' object": the persistent-id pass handles those.
            payload = None
        if payload is None or (
            len(payload) >= threshold and _has_big_inband_bytes(payload, threshold)
        ):
            # Large bytes-likes were written in-band: pickle again, lifting them out. Rare,
            # and only for messages that are big anyway, so the per-object persistent_id call
            # never slows down ordinary messages.
            discard(segs.names)
            segs = _Segments(threshold, reuse)
            pk = _shm_pickler(base)
            payload = _dump(pk, obj, segs)
    except BaseException:
        discard(segs.names)
        raise
    if not segs.entries and not segs.persistent:
        return payload, []
    return _frame(payload, segs.entries, segs.persistent), segs.names


def _dump(cls: type, obj: Any, segs: _Segments) -> bytes:
    if cls is pickle.Pickler:  # the fast path: no file object, no Python-level pickler
        return pickle.dumps(obj, protocol=5, buffer_callback=segs.buffer_callback)
    out = io.BytesIO()
    p = cls(out, protocol=5, buffer_callback=segs.buffer_callback)
    if cls in _shm_picklers.values():
        p._allcores_segments = segs  # read by _persistent_id
    p.dump(obj)
    return out.getvalue()


def _frame(payload: bytes, entries: list[tuple[str, int, int]], persistent: bool) -> bytes:
    parts = [_HEAD.pack(_MAGIC, len(entries), _FLAG_PERSISTENT if persistent else 0)]
    for name, size, kind in entries:
        raw = name.encode()
        parts.append(_SEG.pack(size, kind, len(raw)))
        parts.append(raw)
    parts.append(payload)
    return b"".join(parts)


# Opcodes that carry a bytes-like payload written outside pickle's 64 KiB frames.
_BINBYTES = 0x42  # B: 4-byte length
_BINBYTES8 = 0x8E
_BYTEARRAY8 = 0x96
_BINUNICODE = 0x58  # X
_BINUNICODE8 = 0x8D
_FRAME = 0x95
# Opcodes without an argument (so one byte long): MEMOIZE STOP APPEND(S) SETITEM(S) TUPLE* MARK
# EMPTY_* BUILD REDUCE POP NEWOBJ STACK_GLOBAL ADDITEMS FROZENSET NEWTRUE NEWFALSE NONE.
_NO_ARG_OPCODES = frozenset(b"\x94.aesut\x85\x86\x87(])}bR0\x81\x93\x8f\x90\x91\x88\x89N")


def _has_big_inband_bytes(data: bytes, threshold: int) -> bool:
    """Does this protocol-5 pickle hold a bytes/bytearray of at least ``threshold`` in-band?

    Walks only the top level of the stream: frames (skipped whole) and the payloads that the
    C pickler writes outside frames (anything >= 64 KiB). Anything else is a tiny unframed
    fragment that we do not parse: answer True, which only costs a second, exact pass.
    """
    view = memoryview(data)
    pos = 2 if data[:1] == b"\x80" else 0
    end = len(data)
    while pos < end:
        op = data[pos]
        if op == _FRAME:
            (n,) = struct.unpack_from("<Q", view, pos + 1)
            pos += 9 + n
        elif op in (_BINBYTES, _BINUNICODE):
            (n,) = struct.unpack_from("<I", view, pos + 1)
            if op == _BINBYTES and n >= threshold:
                return True
            pos += 5 + n
        elif op in (_BINBYTES8, _BYTEARRAY8, _BINUNICODE8):
            (n,) = struct.unpack_from("<Q", view, pos + 1)
            if op != _BINUNICODE8 and n >= threshold:
                return True
            pos += 9 + n
        elif op in _NO_ARG_OPCODES:
            pos += 1  # a tiny unframed tail after a big payload, e.g. MEMOIZE + STOP
        else:
            return True
    return False


# --------------------------------------------------------------------------- unpack


def is_shm_message(data: bytes | bytearray | memoryview) -> bool:
    """True when ``data`` (from :func:`pack`) refers to shared-memory segments."""
    return data[:4] == _MAGIC


def segments_of(data: bytes | memoryview) -> list[str]:
    """The segment names a packed message refers to (for :func:`discard` of a dropped message)."""
    if not is_shm_message(data):
        return []
    entries, _, _ = _parse(memoryview(data))
    return [name for name, _, _ in entries]


def segment_bytes(data: bytes | memoryview) -> int:
    """How many bytes of shared memory a packed message refers to (0 for a plain pickle)."""
    if not is_shm_message(data):
        return 0
    entries, _, _ = _parse(memoryview(data))
    return sum(size for _, size, _ in entries)


def _parse(view: memoryview) -> tuple[list[tuple[str, int, int]], int, int]:
    _, count, flags = _HEAD.unpack_from(view, 0)
    pos = _HEAD.size
    entries = []
    for _ in range(count):
        size, kind, nlen = _SEG.unpack_from(view, pos)
        pos += _SEG.size
        entries.append((bytes(view[pos : pos + nlen]).decode(), size, kind))
        pos += nlen
    return entries, pos, flags


class _ShmUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, objs: list[Any], **kw: Any) -> None:
        super().__init__(file, **kw)
        self._objs = objs

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == _PID_TAG):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        if len(pid) == 2:  # bytes / bytearray
            return self._objs[pid[1]]
        _, ref, fmt, shape, readonly = pid
        mv = memoryview(ref) if isinstance(ref, bytes) else self._objs[ref]
        if isinstance(ref, bytes):
            readonly = True  # a bytes copy cannot be written; say so rather than fail later
        if fmt != "B" or shape != (mv.nbytes,):
            try:
                mv = mv.cast("B").cast(fmt, shape)
            except (TypeError, ValueError):
                pass  # a format cast() cannot express (e.g. "<d"): hand back the flat bytes
        return mv.toreadonly() if readonly else mv


class _NoImportWaitUnpickler(pickle.Unpickler):
    """Finds classes in modules already in ``sys.modules`` without ``__import__``.

    ``__import__`` of a module that another thread is importing waits for that import to end.
    The manager thread unpickles results while the caller's thread may be importing the very
    module whose classes the results are instances of (a module that runs a map at import
    time), and that thread is waiting for the results: a deadlock on the import lock. A module
    in ``sys.modules``, even half-imported, is read as it is; only a module not imported at all
    is imported (then nobody can be importing it and holding its lock while waiting on us).
    """

    def find_class(self, module: str, name: str) -> Any:
        loaded = sys.modules.get(module)
        if loaded is None:
            return super().find_class(module, name)
        found: Any = loaded
        for part in name.split("."):
            found = getattr(found, part)
        return found


class _NoImportWaitShmUnpickler(_NoImportWaitUnpickler, _ShmUnpickler):
    pass


def unpack(
    data: bytes | bytearray | memoryview,
    keep: list | None = None,
    *,
    no_import_wait: bool = False,
) -> Any:
    """Rebuild an object packed by :func:`pack`, mapping its segments without copying.

    Arrays and memoryviews that came through shared memory are views on a private mmap of their
    segment (writable, unless the sender's buffer was read-only); the segment's name is unlinked
    as soon as it is mapped, so the memory is freed when the last view goes away. With ``keep``
    (a list), segments their sender marked for recycling keep their name and their maps go into
    ``keep``; pass it to :func:`release_kept` once the objects are gone. With
    ``no_import_wait`` classes are found without waiting on an import in progress (the
    manager's results; see :class:`_NoImportWaitUnpickler`).
    """
    if not is_shm_message(data):
        if no_import_wait:
            return _NoImportWaitUnpickler(io.BytesIO(data)).load()
        return pickle.loads(data)
    view = memoryview(data)
    entries, pos, flags = _parse(view)
    buffers: list[Any] = []
    objs: list[Any] = []
    try:
        for i, (name, size, flagged) in enumerate(entries):
            kind = flagged & ~_KIND_RECYCLE
            if kind in (_KIND_BUFFER, _KIND_MEMORYVIEW):
                if keep is not None and flagged & _KIND_RECYCLE:
                    mapped = _map_kept(name, size, keep)
                else:
                    mapped = _map_segment(name, size)
                if kind == _KIND_BUFFER:
                    buffers.append(mapped)
                    objs.append(None)
                else:
                    objs.append(mapped)
            elif kind == _KIND_BYTES:
                objs.append(_read_segment(name, size))
            elif kind == _KIND_BYTEARRAY:
                objs.append(_read_segment(name, size, into=bytearray(size)))
            else:
                raise pickle.UnpicklingError(f"unknown segment kind {kind}")
            entries[i] = ("", 0, 0)  # consumed: nothing left to unlink for this one
    except BaseException:
        discard(name for name, _, _ in entries if name)
        raise
    payload = view[pos:]
    if not flags & _FLAG_PERSISTENT:
        if no_import_wait:
            return _NoImportWaitUnpickler(io.BytesIO(payload), buffers=buffers).load()
        return pickle.loads(payload, buffers=buffers)  # numpy & co only: the C fast path
    unpickler = _NoImportWaitShmUnpickler if no_import_wait else _ShmUnpickler
    return unpickler(io.BytesIO(payload), objs, buffers=buffers).load()


if sys.platform != "linux":  # pragma: no cover - documented: the data plane is Linux-only
    SHM_THRESHOLD = sys.maxsize  # never use shared memory where /dev/shm is not tmpfs
