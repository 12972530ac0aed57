"""Where Gradio keeps its copies of uploads. Its default, ``/tmp/gradio``, is one folder for every user of the
machine, readable by all of them (each upload in a world-readable file), and a folder another user made first
could hold links that redirect the copies. Unless ``$GRADIO_TEMP_DIR`` says otherwise, ``xaibatch serve`` uses
a folder of its user's own, ``<tmp>/xaibatch-serve-<uid>``, mode 0700. Imports nothing heavy (no Gradio): the
variable must be set before Gradio is imported, which reads it once."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from ..errors import UsageError

VARIABLE = "GRADIO_TEMP_DIR"


def use_private_uploads() -> None:
    """Point Gradio at this user's own folder unless ``$GRADIO_TEMP_DIR`` names one (no file touched)."""
    if not os.environ.get(VARIABLE):
        try:
            tmp = tempfile.gettempdir()
        except FileNotFoundError:  # a read-only container without TMPDIR: Python's own message names no way out
            raise UsageError(
                f"no writable temporary folder for the uploads (TMPDIR, /tmp): set {VARIABLE} or TMPDIR to a "
                "writable folder"
            ) from None
        os.environ[VARIABLE] = str(Path(tmp) / f"xaibatch-serve-{os.getuid()}")


def check_private_uploads() -> Path:
    """Make the folder use_private_uploads chose (0700), or check the one there: a real folder of this user's, not
    a link, nobody else's (then closed to others); UsageError otherwise. A ``$GRADIO_TEMP_DIR`` the user set is
    theirs to choose: only made when missing."""
    use_private_uploads()
    path = Path(os.environ[VARIABLE])
    ours = path.name == f"xaibatch-serve-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, parents=not ours)
    except FileExistsError:
        pass
    except OSError as e:
        raise UsageError(f"cannot make the folder for uploads {path}: {e.strerror or e}") from None
    if not ours:
        return path
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        what = "a link or not a folder" if not stat.S_ISDIR(st.st_mode) else "another user's folder"
        raise UsageError(f"the folder for uploads {path} is {what}: remove it, or set {VARIABLE} to a folder of yours")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path
