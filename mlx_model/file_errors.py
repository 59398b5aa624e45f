"""What to tell a person when a file cannot be read at all (permissions, macOS privacy, a vanished disk).

`str(OSError)` reads "[Errno 1] Operation not permitted: '/Users/…'"; these words say what happened and
what to do. Shared by every reader (images, audio, video, documents, attachments).
"""

from __future__ import annotations

import errno


def unreadable_reason(error: OSError) -> str:
    """The end of a sentence that starts with the file's name: "cannot be read: … ." """
    code = error.errno
    if code in (errno.EPERM, errno.EACCES):
        return ("cannot be read: this app is not allowed to open it. If it is in Desktop, Documents, "
                "Downloads, iCloud Drive or on an external disk, allow access in System Settings › Privacy "
                "& Security › Files and Folders; otherwise check the file's permissions in Finder (Get "
                "Info), or copy it somewhere else and attach the copy.")
    if code == errno.ENOENT:
        return "cannot be read: it no longer exists (moved, renamed or deleted). Choose it again."
    if code == errno.EISDIR:
        return "is a folder, not a file: choose a file inside it."
    if code in (errno.EIO, errno.ENXIO, errno.ENODEV):
        return ("cannot be read: the disk reported an error (it may have been ejected or be damaged). "
                "Reconnect it, or copy the file elsewhere and try again.")
    return f"cannot be read ({error.strerror or error})."


_ACCESS_ERRORS = (errno.EPERM, errno.EACCES, errno.ENOENT, errno.EISDIR, errno.EIO, errno.ENXIO, errno.ENODEV)


def is_access_error(error: BaseException) -> bool:
    """Whether an error is the system refusing or failing to read the file (not its content being bad)."""
    return isinstance(error, OSError) and error.errno in _ACCESS_ERRORS


def error_detail(error: BaseException) -> str:
    """A library error's own words without its errno and path ("Invalid data found when processing input",
    not "[Errno 1094995529] Invalid data found when processing input: '/tmp/…'"), for the end of a message."""
    strerror = getattr(error, "strerror", None)
    return strerror if isinstance(strerror, str) and strerror else str(error)
