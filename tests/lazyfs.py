"""A FUSE filesystem that loses what was not fsynced when its machine "crashes" (like Jepsen's LazyFS).

It passes everything through to a backing directory except file data: a write lands in this
process's memory (4 KiB pages per file, and the file's size as written) and reaches the backing
file only when the file is fsynced. Reads, sizes and listings see the written data, as a page cache
would. A machine crash is this process's death: SIGKILL it (`LazyMount.crash`) and every write not
fsynced is gone, exactly what a power loss does to a kernel's dirty pages; mount it again on the
same backing directory and the files hold what was last synced. Names (create, rename, unlink,
mkdir) are durable at once, as on a journaling filesystem that orders metadata; a file created and
never synced comes back empty, and one renamed before its data was synced comes back with the
data it had when last synced.

Run: `python tests/lazyfs.py BACKING MOUNTPOINT` (root, /dev/fuse, Debian's libfuse2, fusepy).
"""

import errno
import os
import sys
import threading
from dataclasses import dataclass, field

from fuse import FUSE, FuseOSError, Operations  # fusepy

PAGE = 4096


@dataclass
class Unsynced:
    """A file's writes since its last fsync: whole pages as written, and its size as written."""

    size: int
    pages: dict[int, bytearray] = field(default_factory=dict)
    # Lowest size it was truncated to since the last fsync: backing bytes past it are gone.
    floor: int | None = None


class LazyFS(Operations):
    def __init__(self, backing: str) -> None:
        self.backing = os.path.realpath(backing)
        self.unsynced: dict[str, Unsynced] = {}  # by path inside the mount
        self.guard = threading.RLock()  # not `lock`: that is a FUSE operation

    def _real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    # -- data ---------------------------------------------------------------------------------

    def _backing_page(self, fh: int, index: int, state: Unsynced) -> bytearray:
        page = bytearray(os.pread(fh, PAGE, index * PAGE).ljust(PAGE, b"\0"))
        limit = state.size if state.floor is None else min(state.size, state.floor)
        keep = max(0, limit - index * PAGE)
        if keep < PAGE:
            page[keep:] = bytes(PAGE - keep)
        return page

    def _state(self, path: str, fh: int) -> Unsynced:
        state = self.unsynced.get(path)
        if state is None:
            state = self.unsynced[path] = Unsynced(os.fstat(fh).st_size)
        return state

    def read(self, path, size, offset, fh):
        with self.guard:
            state = self.unsynced.get(path)
            if state is None:
                return os.pread(fh, size, offset)
            end = min(offset + size, state.size)
            out = bytearray()
            pos = offset
            while pos < end:
                index, within = divmod(pos, PAGE)
                page = state.pages.get(index) or self._backing_page(fh, index, state)
                take = min(PAGE - within, end - pos)
                out += page[within : within + take]
                pos += take
            return bytes(out)

    def write(self, path, data, offset, fh):
        with self.guard:
            state = self._state(path, fh)
            pos, view = offset, memoryview(data)
            while view:
                index, within = divmod(pos, PAGE)
                page = state.pages.get(index)
                if page is None:
                    page = state.pages[index] = self._backing_page(fh, index, state)
                take = min(PAGE - within, len(view))
                page[within : within + take] = view[:take]
                view, pos = view[take:], pos + take
            state.size = max(state.size, offset + len(data))
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.guard:
            own = fh is None
            if own:
                fh = os.open(self._real(path), os.O_RDWR)
            try:
                state = self._state(path, fh)
                if length < state.size:
                    for index in [i for i in state.pages if i * PAGE >= length]:
                        del state.pages[index]
                    last, within = divmod(length, PAGE)
                    if within and last not in state.pages:
                        state.pages[last] = self._backing_page(fh, last, state)
                    if within:
                        state.pages[last][within:] = bytes(PAGE - within)
                    state.floor = length if state.floor is None else min(state.floor, length)
                state.size = length
            finally:
                if own:
                    os.close(fh)

    def fsync(self, path, datasync, fh):
        with self.guard:
            state = self.unsynced.pop(path, None)
            if state is not None:
                if state.floor is not None:
                    os.ftruncate(fh, state.floor)
                for index, page in sorted(state.pages.items()):
                    length = min(PAGE, state.size - index * PAGE)
                    if length > 0:
                        os.pwrite(fh, bytes(page[:length]), index * PAGE)
                os.ftruncate(fh, state.size)
            os.fsync(fh)
        return 0

    def fsyncdir(self, path, datasync, fh):
        return 0  # names are durable at once (module docstring)

    def flush(self, path, fh):
        return 0  # close() is not a sync: nothing reaches the backing file here

    # -- names and attributes -----------------------------------------------------------------

    def getattr(self, path, fh=None):
        with self.guard:
            st = os.lstat(self._real(path))
            attrs = {
                key: getattr(st, key)
                for key in (
                    "st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size", "st_uid"
                )
            }  # fmt: skip
            if (state := self.unsynced.get(path)) is not None:
                attrs["st_size"] = state.size
            return attrs

    def open(self, path, flags):
        # Always read-write underneath: reads of unsynced pages need the backing bytes around them.
        return os.open(self._real(path), os.O_RDWR)

    def create(self, path, mode, fi=None):
        return os.open(self._real(path), os.O_RDWR | os.O_CREAT, mode)

    def release(self, path, fh):
        os.close(fh)
        return 0

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._real(path))]

    def unlink(self, path):
        with self.guard:
            self.unsynced.pop(path, None)
            os.unlink(self._real(path))

    def rename(self, old, new):
        with self.guard:
            os.rename(self._real(old), self._real(new))
            self.unsynced.pop(new, None)
            for key in [k for k in self.unsynced if k == old or k.startswith(old + "/")]:
                self.unsynced[new + key[len(old) :]] = self.unsynced.pop(key)

    def mkdir(self, path, mode):
        os.mkdir(self._real(path), mode)

    def rmdir(self, path):
        os.rmdir(self._real(path))

    def chmod(self, path, mode):
        os.chmod(self._real(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._real(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._real(path), times)

    def access(self, path, amode):
        if not os.access(self._real(path), amode):
            raise FuseOSError(errno.EACCES)

    def link(self, target, source):
        os.link(self._real(source), self._real(target))

    def symlink(self, target, source):
        os.symlink(source, self._real(target))

    def readlink(self, path):
        return os.readlink(self._real(path))

    def statfs(self, path):
        st = os.statvfs(self._real(path))
        return {
            key: getattr(st, key)
            for key in (
                "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
                "f_frsize", "f_namemax",
            )
        }  # fmt: skip


if __name__ == "__main__":
    backing, mountpoint = sys.argv[1:3]
    FUSE(LazyFS(backing), mountpoint, foreground=True, nothreads=False)
