"""`paris-node` commands run in this process, through the same `node.cli.main` the console script calls:
no interpreter start-up and no second import of torch, diffusers and hivemind (about 4 s of CPU each on two
cores). For offline commands only (data, run init/show, train-local, train-router, sample, ensemble, eval):
anything that starts a DHT node, a daemon or handles signals runs as a real process (tests/daemons.py `cli`).
What a command may change in the process (our loggers' handlers, torch's thread count, argv, the registry of
verified asset paths) is restored, and the command starts with an empty registry as a new process would."""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def no_known_assets() -> Iterator[None]:
    """This process forgets every asset path it verified (as a new process knows none), and gets them back
    after: what shows that a command or a trainer loads no asset it was not given."""
    from expert import assets

    with assets._lock:
        known = dict(assets._paths)
        assets._paths.clear()
    try:
        yield
    finally:
        with assets._lock:
            assets._paths.clear()
            assets._paths.update(known)


def cli_inproc(*args) -> subprocess.CompletedProcess:
    """`paris-node ARGS` in this process: its exit code, stdout and stderr, as `subprocess.run` returns them."""
    import torch

    from node.cli import main

    argv = ["paris-node", *map(str, args)]
    loggers = {name: logging.getLogger(name) for name in ("node", "swarm", "expert", "hivemind")}
    saved = {name: (lg.handlers[:], lg.level, lg.propagate) for name, lg in loggers.items()}
    threads, old_argv = torch.get_num_threads(), sys.argv
    out, err = io.StringIO(), io.StringIO()
    code = 0
    sys.argv = argv
    try:
        with no_known_assets(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old_argv
        torch.set_num_threads(threads)
        for name, (handlers, level, propagate) in saved.items():
            lg = loggers[name]
            lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
