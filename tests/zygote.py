"""A pre-imported fork server for the processes the suite starts (a zygote, as Android starts its apps).

Every `paris-node` daemon, `status`, `fetch` and attacker script a test starts is a new interpreter that spends
about 6 s of CPU importing torch, diffusers, hivemind and paris-node before it does anything, and the suite
starts well over a hundred of them on two cores. Here one process imports all of that once; each process a test
asks for is a fork of it that becomes what `python -c CODE ARGS`, `python SCRIPT ARGS` or `python -m MODULE
ARGS` would have been:

- its own argv, environment, working directory, stdin/stdout/stderr (passed as file descriptors), and
  `sys.path` as that command line would have built it;
- its own session and process group (as `start_new_session=True`): `os.killpg(proc.pid, SIGKILL)` takes it and
  everything it started, as before;
- its own pid (the one `node.json` records and `proc.pid` gives), its own random state (Python's `random`
  reseeds itself at a fork; numpy's and torch's global generators are reseeded from the OS);
- its exit status comes back to the test through the zygote, which is its parent, as a `subprocess.Popen`'s
  would (`poll`, `wait`, `returncode`, negative for a signal).

- two zygotes take turns, each with its own hash seed: fresh interpreters each hash strings with a seed of
  their own, so peers that iterate a set of strings disagree on its order, as they would in a real swarm.

`ip netns exec NS python ...` is a fork that enters the namespace itself (as `ip` does for the network; there is
no `/etc/netns/NS` to bind). What a fork cannot be is started by `subprocess` as before: another program, or an
environment that differs from the zygote's in a variable read while importing (`OMP_*`, `PYTHON*` but
`PYTHONPATH`, ...), or a py-libp2p program.

It is off unless PARIS_TEST_ZYGOTE=1. A fork starts in 0.4 s where a new interpreter took 8: two races that
this exposed were bugs of ours, now fixed (a node restarted within a second of its crash found its identity
still taken; two gets of one CID at once broke each other's download). Once, in a fresh-clone CI run, a forked
claim node stopped answering for 90 s while alive; not seen again in five whole-suite runs and six runs of the
claim tests since. A silent claim or gossip node now writes every thread's stack into its log before the test
fails (tests/swarm/conftest.py). `.ci/run` turns it on, with two xdist workers (docs/testing.md).

The zygote is one thread (a fork of a threaded process may inherit a held lock): a selector over its listening
socket, a self-pipe woken by SIGCHLD, and a pipe from the test process whose end means the test process is gone
(then every child still running is killed by process group, and the zygote exits)."""

from __future__ import annotations

import array
import contextlib
import importlib.util
import json
import os
import random
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the environment of the processes the suite starts (one torch thread each: two cores run several of them), and
# of the zygote they are forked from
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "140"}
# what the zygote imports before it forks: everything a command or a test script needs at its start
PRELOAD = ("node.cli", "node.daemon", "node.status", "node.fetch", "node.doctor", "node.cli_swarm",
           "expert.pipeline", "swarm.dht", "swarm.gossip", "hivemind", "diffusers", "torch", "numpy")
# variables that nothing reads while importing: a request may set them differently from the zygote's
RUNTIME_VARS = ("PYTHONPATH", "COLUMNS", "LINES", "TERM", "PYTEST_CURRENT_TEST")
RUNTIME_PREFIXES = ("PARIS_",)
_HEADER = struct.Struct("!I")


# ---------------------------------------------------------------- the zygote (runs in its own process)

def _recv_exact(conn: socket.socket, n: int, fds: list[int]) -> bytes:
    buf = b""
    while len(buf) < n:
        msg, anc, _flags, _addr = conn.recvmsg(n - len(buf), socket.CMSG_SPACE(16 * 4))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(data[: len(data) - len(data) % got.itemsize])
                fds.extend(got)
        if not msg:
            raise EOFError("the client left mid-request")
        buf += msg
    return buf


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    fds: list[int] = []
    (size,) = _HEADER.unpack(_recv_exact(conn, _HEADER.size, fds))
    req = json.loads(_recv_exact(conn, size, fds))
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"a request carries 3 file descriptors, this one {len(fds)}")
    return req, fds


def _become(req: dict, fds: list[int]) -> None:
    """In the fork: this process becomes the requested one (stdio, session, environment, directory, argv,
    sys.path, random state); the caller then runs it as the interpreter would."""
    os.setsid()
    if req.get("netns"):
        _enter_netns(req["netns"])
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    os.environ.clear()
    os.environ.update(req["env"])
    os.chdir(req["cwd"])
    argv: list[str] = req["argv"]
    base = [p for p in sys.path[1:] if p not in _pythonpath(_ZYGOTE_ENV)]
    first = "" if argv[0] in ("-c", "-m") else os.path.dirname(os.path.abspath(argv[0]))
    if argv[0] == "-m":
        first = os.getcwd()
    sys.path[:] = [first, *_pythonpath(req["env"]), *base]
    import numpy
    import torch

    numpy.random.seed()
    torch.seed()
    _renew_locks()


def _enter_netns(name: str) -> None:
    """What `ip netns exec NAME` does for the network: this process (one thread still) moves into the named
    network namespace, and what it starts (its DHT process, p2pd) is born there."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
            err = ctypes.get_errno()
            raise OSError(err, f"setns into network namespace {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _pythonpath(env: dict) -> list[str]:
    return [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


_ZYGOTE_ENV: dict[str, str] = {}
_SHARED_LOCKS: list[tuple[object, str, type]] = []


def _import_time_locks() -> list[tuple[object, str, type]]:
    """Every multiprocessing lock that importing created, as (module or class, attribute, type).

    Such a lock is a semaphore in memory that a fork shares with its parent: every fork of the zygote would
    hold the same one (hivemind's MPFuture has three), and a process killed while it held it would leave
    every later fork blocked on it. A fresh interpreter makes its own, so each fork makes new ones
    (`_renew_locks`). A lock held anywhere else could not be renewed: the zygote refuses to start."""
    import gc
    import multiprocessing.synchronize as mps

    found, unknown = [], []
    for lock in [o for o in gc.get_objects() if isinstance(o, mps.SemLock)]:
        places = []
        for holder in gc.get_referrers(lock):
            if not isinstance(holder, dict):
                continue
            for name in [k for k, v in list(holder.items()) if v is lock]:
                owners = [o for o in gc.get_referrers(holder) if isinstance(o, type | type(sys))
                          and o.__dict__.get(name) is lock]
                places += [(owner, name, type(lock)) for owner in owners]
        if places and type(lock) in (mps.Lock, mps.RLock):
            found += places
        else:
            unknown.append(repr(lock))
    if unknown:
        raise RuntimeError(f"multiprocessing locks made while importing that a fork cannot renew: {unknown}")
    return found


def _renew_locks() -> None:
    import multiprocessing

    ctx = multiprocessing.get_context()
    for owner, name, kind in _SHARED_LOCKS:
        setattr(owner, name, kind(ctx=ctx))


def serve(sock_path: str, alive_fd: int) -> dict:
    """Import, then fork a child for each request. Returns only in a child, with its request."""
    import gc
    import importlib
    import warnings

    with warnings.catch_warnings():  # a fresh process would print these to the command's stderr, not ours
        warnings.simplefilter("ignore")
        for name in PRELOAD:
            importlib.import_module(name)
    _ZYGOTE_ENV.update(os.environ)
    _SHARED_LOCKS.extend(_import_time_locks())
    gc.collect()
    gc.freeze()  # what the imports built stays out of the children's collections: fewer copied pages

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path + ".tmp")
    listener.listen(64)
    os.rename(sock_path + ".tmp", sock_path)  # the client connects once the imports are done
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "accept")
    sel.register(wake_r, selectors.EVENT_READ, "child")
    sel.register(alive_fd, selectors.EVENT_READ, "alive")
    children: dict[int, socket.socket | None] = {}  # a child whose client left keeps running, and is ours

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = children.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"status": status}).encode() + b"\n")
                conn.close()

    while True:
        for key, _ in sel.select():
            if key.data == "alive":  # the test process is gone: so are its children
                for pid in children:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
                os._exit(0)
            if key.data == "child":
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 512):
                        pass
                reap()
                continue
            conn, _ = listener.accept()
            try:
                req, fds = _read_request(conn)
            except (OSError, EOFError, ValueError) as e:
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps({"error": str(e)}).encode() + b"\n")
                conn.close()
                continue
            ready_r, ready_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                sel.close()
                listener.close()
                for c in (conn, *children.values()):
                    if c is not None:
                        c.close()
                for fd in (wake_r, wake_w, alive_fd):
                    os.close(fd)
                try:
                    _become(req, fds)
                except BaseException as e:  # as Popen raises when the child cannot start: said, then gone
                    os.write(ready_w, f"{type(e).__name__}: {e}".encode()[:4000])
                    os._exit(127)
                os.close(ready_w)
                return req
            os.close(ready_w)
            for fd in fds:
                os.close(fd)
            with os.fdopen(ready_r, "rb") as ready:  # Popen returns once the child has its session and stdio
                failed = ready.read().decode(errors="replace")
            reply = {"error": failed} if failed else {"pid": pid}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:  # the client left: the child runs on, as a Popen'd process would
                conn.close()
                conn = None
            if failed:
                if conn is not None:
                    conn.close()
                continue
            children[pid] = conn


def run(req: dict) -> None:
    """Run the request's program as `python ARGV` would, in this (forked) process's __main__."""
    import runpy

    argv: list[str] = req["argv"]
    if argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        main = sys.modules["__main__"]
        for name in [n for n in vars(main) if not n.startswith("__")]:
            delattr(main, name)
        exec(compile(argv[1], "<string>", "exec"), vars(main))
    elif argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(argv)
        runpy.run_path(argv[0], run_name="__main__")


# ---------------------------------------------------------------- the test process's side

class Forked:
    """A process forked by the zygote, with what the tests use of `subprocess.Popen`."""

    def __init__(self, args: list[str], pid: int, conn: socket.socket, stdin, stdout, stderr) -> None:
        self.args, self.pid, self._conn = args, pid, conn
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.returncode: int | None = None
        self._buf = b""
        self._lock = threading.Lock()

    def _collect(self, timeout: float | None) -> None:
        with self._lock:
            if self.returncode is not None:
                return
            deadline = None if timeout is None else time.monotonic() + timeout
            while b"\n" not in self._buf:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._conn.settimeout(left)
                try:
                    got = self._conn.recv(256)
                except (TimeoutError, BlockingIOError):
                    return
                if not got:  # the zygote is gone: the child went with it
                    self.returncode = -signal.SIGKILL
                    self._conn.close()
                    return
                self._buf += got
            status = json.loads(self._buf.split(b"\n", 1)[0])["status"]
            self.returncode = os.waitstatus_to_exitcode(status)
            self._conn.close()

    def poll(self) -> int | None:
        if self.returncode is None and self._lock.acquire(blocking=False):  # not while a wait() blocks
            self._lock.release()
            self._collect(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._collect(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple:
        """Everything the child writes to its piped stdout and stderr, once it exits."""
        got: dict[str, object] = {}
        readers = [threading.Thread(target=lambda n=n, f=f: got.__setitem__(n, f.read()), daemon=True)
                   for n, f in (("out", self.stdout), ("err", self.stderr)) if f is not None]
        for t in readers:
            t.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in readers:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return got.get("out"), got.get("err")


class _Zygote:
    """The zygote process this test process started (lazily, at its first request), and its socket."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = dict(env)
        self.dir = tempfile.mkdtemp(prefix="paris-zygote-")
        self.sock = os.path.join(self.dir, "zygote.sock")
        alive_r, self._alive_w = os.pipe()
        self.log = open(os.path.join(self.dir, "zygote.log"), "wb")  # noqa: SIM115 (for the process's life)
        code = f"from tests import zygote as z; z.run(z.serve({self.sock!r}, {alive_r}))"
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=self.env, pass_fds=(alive_r,),
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        os.close(alive_r)

    def connect(self, timeout: float = 120.0) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            if os.path.exists(self.sock):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.sock)
                return s
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(self.log.name).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the test zygote did not start (exit {self.proc.poll()}):\n{tail}")
            time.sleep(0.05)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._alive_w)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# two zygotes, taken in turn, each with its own hash seed: fresh interpreters hash strings with a seed of their
# own, so peers that iterate a set of strings disagree on its order; forks of one zygote would all agree, and a
# test of peers that must not depend on it would no longer show that they do not
ZYGOTES = 2
_zygotes: list[_Zygote | None] = [None] * ZYGOTES
_turn = 0
_zygote_lock = threading.Lock()


def _import_time_vars(env: dict[str, str]) -> dict[str, str]:
    """The variables of `env` that a process may read while it imports: a fork inherits the zygote's."""
    return {k: v for k, v in env.items() if k not in RUNTIME_VARS and not k.startswith(RUNTIME_PREFIXES)}


def _get_zygote() -> _Zygote:
    global _turn
    with _zygote_lock:
        if not any(_zygotes):  # both start at once: each takes about 6 s of CPU to import
            for i in range(ZYGOTES):
                _zygotes[i] = _Zygote({**ENV, "PYTHONHASHSEED": str(random.randrange(1, 2**32))})
        _turn = (_turn + 1) % ZYGOTES
        z = _zygotes[_turn]
        if z is None or z.proc.poll() is not None:
            z = _zygotes[_turn] = _Zygote({**ENV, "PYTHONHASHSEED": str(random.randrange(1, 2**32))})
        return z


def _shutdown() -> None:
    for z in _zygotes:
        if z is not None:
            z.close()


import atexit  # noqa: E402

atexit.register(_shutdown)


def _stdio(spec, default: int, mode: str, text: bool):
    """(fd to send, our file object or None, fd to close once sent)."""
    if spec is None:
        return default, None, None
    if spec == subprocess.DEVNULL:
        fd = os.open(os.devnull, os.O_RDWR)
        return fd, None, fd
    if spec == subprocess.PIPE:
        r, w = os.pipe()
        if mode == "w":  # the child reads stdin
            return r, open(w, "w" if text else "wb"), r
        return w, open(r, "r" if text else "rb"), w
    if spec == subprocess.STDOUT:
        raise ValueError("stderr=STDOUT is not supported by the zygote")
    return spec.fileno(), None, None


def _uses_libp2p(argv: list[str], cwd: Path | str) -> bool:
    """Whether the program imports py-libp2p (the gossip worker and the scripts that speak its gossip): its
    protobufs and hivemind's, which the zygote has imported, define the same symbols in protobuf's one
    descriptor pool, so the import fails in a fork and such a program runs as a real process."""
    if argv[0] == "-c":
        text = argv[1]
    elif argv[0] == "-m":
        text = argv[1]
        spec = importlib.util.find_spec(argv[1])
        if spec is not None and spec.origin and os.path.isfile(spec.origin):
            text = Path(spec.origin).read_text(errors="replace")
    else:
        path = Path(cwd) / argv[0]
        text = path.read_text(errors="replace") if path.is_file() else ""
    return re.search(r"^\s*(from|import)\s+libp2p\b", text, re.MULTILINE) is not None


def popen(argv: list[str], *, cwd: Path | str, env: dict[str, str], stdin=None, stdout=None, stderr=None,
          text: bool = False, start_new_session: bool = True, fork: bool | None = None):
    """`subprocess.Popen(argv, ...)`, as a fork of the zygote when one is wanted (`fork`, by default
    PARIS_TEST_ZYGOTE=1) and it can be one; otherwise a real Popen. The child always has its own session (what
    every caller of this asks for)."""
    netns = None
    if argv[:3] == ["ip", "netns", "exec"] and len(argv) > 4 and not os.path.exists(f"/etc/netns/{argv[3]}"):
        netns, argv = argv[3], argv[4:]  # the fork enters the namespace itself (no /etc/netns files to bind)
    wanted = os.environ.get("PARIS_TEST_ZYGOTE") == "1" if fork is None else fork
    forkable = (wanted and argv[0] == sys.executable and len(argv) >= 2 and argv[1] != "-"
                and stderr != subprocess.STDOUT
                and (not argv[1].startswith("-") or argv[1] in ("-c", "-m"))
                and _import_time_vars(env) == _import_time_vars(ENV) and not _uses_libp2p(argv[1:], cwd))
    if not forkable:
        argv = argv if netns is None else ["ip", "netns", "exec", netns, *argv]
        return subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, text=text,
                                start_new_session=start_new_session)
    z = _get_zygote()
    sent, ours, close = [], [], []
    for spec, default, mode in ((stdin, 0, "w"), (stdout, 1, "r"), (stderr, 2, "r")):
        fd, mine, to_close = _stdio(spec, default, mode, text)
        sent.append(fd)
        ours.append(mine)
        if to_close is not None:
            close.append(to_close)
    body = json.dumps({"argv": argv[1:], "cwd": str(cwd), "env": dict(env), "netns": netns}).encode()
    conn = z.connect()
    try:
        conn.sendmsg([_HEADER.pack(len(body)) + body],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", sent).tobytes())])
    finally:
        for fd in close:
            os.close(fd)
    line = b""
    while not line.endswith(b"\n"):
        got = conn.recv(256)
        if not got:
            raise RuntimeError("the test zygote closed the connection before it forked")
        line += got
    reply = json.loads(line.split(b"\n", 1)[0])
    if "pid" not in reply:
        conn.close()
        raise OSError(f"the test zygote could not start {argv[1:3]}: {reply.get('error')}")
    proc = Forked(argv, reply["pid"], conn, *ours)
    proc._buf = line.split(b"\n", 1)[1]
    return proc


def run_to_end(argv: list[str], *, cwd: Path | str, env: dict[str, str], timeout: float | None = None,
               text: bool = True, fork: bool | None = None) -> subprocess.CompletedProcess:
    """`subprocess.run(argv, capture_output=True, ...)` through `popen`."""
    proc = popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=text, fork=fork)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
