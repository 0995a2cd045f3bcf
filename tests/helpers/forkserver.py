"""Start ``dasgen`` commands (or any Python source) as processes of their own without paying an interpreter's start-up.

A fresh ``python -m dasgen`` spends seconds of CPU importing torch and diffusers before it does anything, and the
crash-safety tests start a dozen processes to kill. A :class:`ForkServer` imports those libraries once -- and no
dasgen module -- then forks one child per command. A child is a real process: it can be SIGKILLed mid-write, and it
exits with the command's status; it starts from the state a fresh interpreter reaches after the same imports, so what
it loads of dasgen is what the command loads (``test_code_deps`` relies on that).

The server is single-threaded when it forks (pyarrow, whose allocator starts a thread, is left to the children), and
reaps its children as they end (on SIGCHLD), so their CPU time counts in the test run's. The test is not a child's
parent, so a child records its exit status in a file just before it exits; a child killed by a signal records
nothing, and its status is the signal's (its killer knows it).
"""

from __future__ import annotations

import json
import os
import signal
import atexit
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PRELOAD = ("import numpy, torch, PIL.Image, safetensors.torch, yaml, typer, rich, scipy.ndimage\n"
           "import diffusers.training_utils\n"
           "from diffusers import UNet2DModel\n")

SERVER = PRELOAD + r'''
import json, os, signal, sys, traceback

assert len(os.listdir("/proc/self/task")) == 1, "the fork server must be single-threaded"
assert not [name for name in sys.modules if name.split(".")[0] == "dasgen"], "a child must start with no dasgen module"


def reap(*_):
    """Reap every child that has ended (so that its CPU time counts in this process's, and so in the test run's)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


signal.signal(signal.SIGCHLD, reap)  # children are reaped as they end


def child(request):
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the command may wait for subprocesses of its own
    devnull = os.open(os.devnull, os.O_RDONLY)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(devnull, 0), os.dup2(log, 1), os.dup2(log, 2)  # off the server's pipes
    os.close(devnull), os.close(log)
    sys.stdin, sys.stdout, sys.stderr = (open(0, closefd=False), open(1, "w", buffering=1, closefd=False),
                                         open(2, "w", buffering=1, closefd=False))
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    real_exit = os._exit

    def recording_exit(code):
        sys.stdout.flush(), sys.stderr.flush()
        fd = os.open(request["status"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, str(code).encode())
        os.close(fd)
        real_exit(code)

    os._exit = recording_exit  # also what a command calling os._exit itself goes through
    sys.argv = request["argv"]
    code = 0
    try:
        if request["source"] is not None:
            sys.path.insert(0, os.path.dirname(os.path.abspath(request["argv"][0])))  # as `python script.py` does
            exec(compile(request["source"], request["argv"][0], "exec"), {"__name__": "__main__",
                                                                          "__file__": request["argv"][0]})
        else:
            from dasgen.cli import app
            app(prog_name="dasgen", args=request["argv"][1:])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    os._exit(code)


for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(request)
    sys.stdout.write(json.dumps({"pid": pid}) + "\n")
    sys.stdout.flush()
'''


class Child:
    """A forked command, with the part of :class:`subprocess.Popen`'s interface the tests use."""

    def __init__(self, pid: int, status: Path) -> None:
        self.pid, self._status, self.returncode = pid, status, None
        self._killed_by: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                os.kill(self.pid, 0)
                return None
            except ProcessLookupError:  # ended and reaped by the server
                pass
            recorded = self._status.read_text().strip() if self._status.is_file() else ""
            # nothing recorded (or cut short): the child was killed by a signal
            self.returncode = int(recorded) if recorded.lstrip("-").isdigit() else -(self._killed_by or signal.SIGKILL)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked pid {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        self._killed_by = signum
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """One server process; :meth:`start` forks a command from it. Close it when done (a fixture does)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = dict(env if env is not None else os.environ)
        self.status_dir = Path(tempfile.mkdtemp(prefix="forkserver-"))
        self.process = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=self.env, text=True)

    def start(self, argv: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
              source: str | None = None) -> Child:
        """``dasgen argv[1:]`` (or ``source`` run as ``__main__`` with ``sys.argv = argv``) in a forked child whose
        stdout and stderr go to ``log`` (appended) and whose environment is the server's plus ``env``."""
        status = self.status_dir / f"{uuid.uuid4().hex}.status"
        request = {"argv": [str(a) for a in argv], "log": str(log), "env": dict(env or {}), "status": str(status),
                   "cwd": str(cwd or Path.cwd()), "source": source}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError(f"the fork server ended (exit {self.process.wait()})")
        return Child(json.loads(reply)["pid"], status)

    def run(self, argv: list[str], *, log: Path, timeout: float = 300, **options) -> tuple[int, str]:
        """Start and wait: (exit status, the log's text)."""
        code = self.start(argv, log=log, **options).wait(timeout)
        return code, log.read_text() if log.is_file() else ""

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)
        for path in self.status_dir.glob("*"):
            path.unlink()
        self.status_dir.rmdir()


_SHARED: ForkServer | None = None


def shared_server() -> ForkServer:
    """This process's fork server, started on first use with one thread per BLAS/OpenMP pool (2 shared cores), and
    closed when the process exits."""
    global _SHARED
    if _SHARED is None or _SHARED.process.poll() is not None:
        _SHARED = ForkServer({**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        atexit.register(_SHARED.close)
    return _SHARED
