"""Glue for the Snakemake scripts: logs that catch everything a job prints, including its subprocesses."""
from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def log_to(path: str | os.PathLike):
    """Send file descriptors 1 and 2 (so also nnU-Net's worker processes) to ``path`` for the block.

    An exception is written to the log with its traceback and re-raised, so the job fails and the log
    says why.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            traceback.print_exc(file=sys.stderr)
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
