"""What a training rank runs first: tie its life to the client's, then import torch and train.

``python -m fedsilo.client.rank_entry FOLDER CLIENT_PID`` (started by torch's elastic agent,
``client/rank_launch.py``). ``PR_SET_PDEATHSIG`` is set before anything heavy is imported
(importing torch takes seconds on a loaded host), so a rank never outlives its client however
the client ends: SIGKILL, or a signal that lands while the agent is still starting the ranks,
before it would stop them itself.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with(parent: int) -> None:
    """Have the kernel SIGKILL this process when ``parent`` ends (Linux); end now if it has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the client ended before the request above took effect
        os._exit(1)


def main() -> None:
    """Check the arguments, tie this rank to the client, train; end with the rank's code."""
    if len(sys.argv) != 3 or not sys.argv[2].isdigit():
        print("usage: python -m fedsilo.client.rank_entry FOLDER CLIENT_PID", file=sys.stderr)
        os._exit(2)
    die_with(int(sys.argv[2]))
    # Imported only now, once the rank cannot outlive the client (the point of this module).
    from fedsilo.client import rank_worker
    from fedsilo.common.cli import exit_process

    # Skip interpreter finalization (as the daemons do): gloo's threads winding down there
    # can end a finished rank in "terminate called without an active exception" (SIGABRT).
    exit_process(rank_worker.main([sys.argv[1]]))


if __name__ == "__main__":
    main()
