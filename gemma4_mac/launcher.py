"""`mlx.launch` without its busy loop: `python -m gemma4_mac.launcher ARGS` runs `mlx.launch ARGS`.

mlx.launch (mlx 0.32) relays each rank's output in a thread that `select`s on the rank's stdin pipe for
writing even with nothing to write; a pipe is always writable, so every thread spins and the launcher takes
a whole CPU core for as long as the ranks run (106% measured on this machine). For `serve --hosts` that is
rank 0's Mac, for the server's whole life. Its main loop spins the same way on a stdin at end of file
(/dev/null, a closed pipe), which is always readable. We never send the ranks input, so the launcher's
`select` here leaves out the descriptors to write to and this process's stdin.
"""

from __future__ import annotations

import select as _select
import sys
import time
from typing import Optional, Sequence


_STDIN = 0  # this process's standard input, as the launcher passes it to select


def _select_reads(rlist, wlist, xlist, timeout=None):
    """`select` for the ranks' output only: there is never input to read here or to write to a rank."""
    rlist = [fd for fd in rlist if fd != _STDIN]
    if not rlist and not xlist:  # the main loop's wait for input: just wait
        time.sleep(timeout or 0)
        return [], [], []
    readable, _, exceptional = _select.select(rlist, [], xlist, timeout)
    return readable, [], exceptional


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run mlx.launch with `argv` (sys.argv[1:] by default) and the quiet select."""
    from mlx._distributed_utils import launch

    if hasattr(launch, "select"):  # where a later MLX changes its loop, it runs as it is
        launch.select = _select_reads
    sys.argv = ["mlx.launch", *(sys.argv[1:] if argv is None else argv)]
    launch.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
