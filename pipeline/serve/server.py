"""A real Triton server from the package's own dependencies: PyPI's `nvidia-pytriton` wheel bundles the
`tritonserver` binary (2.51) and its Python backend, which this module drives on a model repository.

Why the binary on a repository, not PyTriton's `Triton().bind()`: the repository is a DVC output whose
files are hashed (`Repository.verify`), and NGC's container loads the same layout, so what is served is
what ships. The Python backend's stub is an embedded interpreter: it needs this interpreter's own
libpython (not the system's) and this environment's packages (numpy < 2: with numpy 2 the 2.51 stub
crashes on BYTES tensors), both given through its environment here.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import PipelineError

GLIBC_NEEDED = (2, 35)


class ServerUnavailable(PipelineError, RuntimeError):
    """The bundled server cannot run on this machine; the message says why in one line."""


@dataclass(frozen=True)
class Bundle:
    """Where the wheel put the server, its libraries, its Python backend and the stub for this Python."""

    binary: Path
    libs: Path
    backend: Path  # libtriton_python.so
    stub: Path  # triton_python_backend_stub built for this interpreter's version


def bundle() -> Bundle:
    """The bundled server's parts, or ServerUnavailable saying which one is missing and why."""
    libc, version = platform.libc_ver()
    found = tuple(int(p) for p in version.split(".")[:2]) if libc == "glibc" and version else None
    if found is None or found < GLIBC_NEEDED:
        raise ServerUnavailable(
            f"the bundled Triton server needs glibc >= {'.'.join(map(str, GLIBC_NEEDED))}, this machine has "
            f"{libc or 'no glibc'} {version}; serve models/triton from NGC's container instead (docs/deploy.md)"
        )
    try:
        import pytriton
    except ImportError as e:
        raise ServerUnavailable(f"nvidia-pytriton is not installed ({e}); `pip install -e '.[serve]'`") from e
    root = Path(pytriton.__file__).parent / "tritonserver"
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    parts = Bundle(
        root / "bin" / "tritonserver",
        Path(pytriton.__file__).parents[1] / "nvidia_pytriton.libs",
        root / "backends" / "python" / "libtriton_python.so",
        root / "python_backend_stubs" / python / "triton_python_backend_stub",
    )
    for name, path in vars(parts).items():
        if not path.exists():
            what = f"no Python-backend stub for Python {python}" if name == "stub" else f"no {name} at {path}"
            raise ServerUnavailable(f"the bundled Triton server cannot run here: {what}")
    return parts


def backend_directory(parts: Bundle, into: Path) -> Path:
    """A backend directory holding the Python backend (its library and `triton_python_backend_utils`)
    with the stub built for this interpreter."""
    python = into / "python"
    shutil.copytree(parts.backend.parent, python, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    shutil.copy2(parts.stub, python / parts.stub.name)
    return into


def stub_environment(parts: Bundle, project: Path) -> dict[str, str]:
    """The server's environment: the bundle's libraries and this interpreter's own libpython first; the
    virtual environment as if activated (the stub reads VIRTUAL_ENV and PATH, not PYTHONPATH alone)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")  # no __pycache__ inside the (DVC-tracked) repository
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(parts.libs), libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix
        env["PATH"] = os.pathsep.join((str(Path(sys.prefix) / "bin"), env.get("PATH", "")))
    site = sysconfig.get_paths()["purelib"]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project), site, env.get("PYTHONPATH", "")) if p)
    return env


@dataclass(frozen=True)
class Ports:
    host: str = "127.0.0.1"
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc}"


class Server:
    """One `tritonserver` process on `repository`: model control off (clients can neither load nor
    unload), loopback unless told otherwise; `start` waits until it is ready."""

    def __init__(self, repository: Path, ports: Ports, exit_timeout: int = 10, log: Path | None = None):
        self.repository, self.ports, self.exit_timeout = Path(repository), ports, exit_timeout
        self.parts = bundle()
        self.scratch = Path(tempfile.mkdtemp(prefix="lio-serve-"))
        self.backends = backend_directory(self.parts, self.scratch / "backends")
        self.log = log or self.scratch / "server.log"
        self.process: subprocess.Popen | None = None
        self.regions: list[Path] = []

    def command(self) -> list[str]:
        p = self.ports
        return [
            str(self.parts.binary),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={self.backends}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--http-address={p.host}",
            f"--http-port={p.http}",
            f"--grpc-address={p.host}",
            f"--grpc-port={p.grpc}",
            f"--metrics-address={p.host}",
            f"--metrics-port={p.metrics}",
            "--allow-cpu-metrics=false",
            # the stubs' shared memory grows in 16 MiB steps (default 1 MiB): a large request is one step, not 16
            "--backend-config=python,shm-growth-byte-size=16777216",
            "--log-verbose=0",
        ]

    def start(self, timeout: float = 120.0) -> None:
        project = Path(__file__).resolve().parents[2]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                env=stub_environment(self.parts, project),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches `lio serve`, which stops the server in order
            )
        self.wait_ready(timeout)
        self.regions = self.shared_memory()  # recorded now: a stub that dies takes its command line with it

    def ready(self) -> bool:
        """Triton's own readiness endpoint, through tritonclient (loopback; false while it cannot answer)."""
        import tritonclient.http as http

        try:
            return bool(http.InferenceServerClient(self.ports.http_url, connection_timeout=1).is_server_ready())
        except Exception:  # refused, closed or timed out: not ready yet
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerUnavailable(
                    f"tritonserver exited with status {self.process.returncode}: {self.last_error()}"
                )
            if self.ready():
                return
            time.sleep(0.2)
        self.stop()
        raise ServerUnavailable(f"tritonserver was not ready after {timeout:.0f} s: {self.last_error()}")

    def last_error(self) -> str:
        """The server's first error line (a model's own failure comes before the summary), with the log."""
        lines = (
            [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()] if self.log.exists() else []
        )
        failed = [ln for ln in lines if "failed to load '" in ln or "Error" in ln]  # a model's own failure
        errors = failed or [ln for ln in lines if ln.startswith("E") or "error" in ln.lower()]
        return (errors or lines or ["no output"])[0].strip()[:600] + f" (log: {self.log})"

    def stubs(self) -> list[int]:
        """The Python-backend stub processes the server started (one per model instance)."""
        if self.process is None:
            return []
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                stat = (proc / "stat").read_text()
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                if parent == self.process.pid and b"python_backend_stub" in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except (OSError, ValueError, IndexError):
                continue
        return found

    def shared_memory(self) -> list[Path]:
        """The stubs' shared-memory regions (/dev/shm), named on their command lines."""
        regions = []
        for pid in self.stubs():
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            regions += [Path("/dev/shm") / a.decode() for a in args if a.startswith(b"triton_python_backend_shm")]
        return regions

    def stop(self, now: bool = False) -> int | None:
        """SIGTERM: Triton stops taking requests, finishes those in flight for up to `exit_timeout` s, exits.
        `now`: SIGKILL to the server and its stubs (a dead stub makes a graceful exit wait out its timeout);
        the shared memory a killed stub leaves in /dev/shm is removed."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        regions = {*self.regions, *self.shared_memory()}
        if not now:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(0 if now else self.exit_timeout + 10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            code = self.process.wait()
        for region in regions:
            region.unlink(missing_ok=True)
        return code

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)
