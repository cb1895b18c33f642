"""Processes of one bench run: the fake, the load generator, mitmdump (bare and with the gateway),
HAProxy; CPU and RSS read from /proc; pinning with sched_setaffinity.

Everything listens on 127.0.0.1 only. Every process started here is stopped by the Bench's
`close()` (and by its context manager), by pid, never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)
MITMDUMP = PYTHON.parent / "mitmdump"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def idlest_first(cores: list[int], sample_s: float = 0.5) -> list[int]:
    """The usable cores, least busy first (from /proc/stat over `sample_s`): the machine may be shared,
    and the proxy under test gets the quietest core."""

    def busy() -> dict[int, tuple[int, int]]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name != "cpu":
                    values = [int(v) for v in fields]
                    idle = values[3] + (values[4] if len(values) > 4 else 0)
                    out[int(name[3:])] = (sum(values), idle)
        return out

    try:
        before = busy()
        time.sleep(sample_s)
        after = busy()
    except (OSError, ValueError):
        return cores

    def load(c: int) -> float:
        total = after[c][0] - before[c][0]
        return 1.0 - (after[c][1] - before[c][1]) / total if total else 0.0

    return sorted(cores, key=lambda c: load(c) if c in before and c in after else 1.0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _pin(cpus: set[int] | None):
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return None

    def apply() -> None:  # runs in the child before exec, so every thread it starts inherits it
        os.sched_setaffinity(0, cpus)

    return apply


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen
    log: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> float:
        return rss_mb(self.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class LoadClient:
    """The load generator process; one job at a time, JSON lines both ways."""

    def __init__(self, workdir: Path, cpus: set[int] | None) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if cpus:
            env["BENCH_CPUS"] = ",".join(str(c) for c in sorted(cpus))
        self.log = workdir / "load.log"
        self.proc = subprocess.Popen(
            [str(PYTHON), "-m", "bench.load"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.log, "wb"),  # closed with the process
            env=env,
            text=True,
        )

    def start(self, job: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator died:\n{self.log.read_text(errors='replace')[-3000:]}")
        return json.loads(line)

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        self.start(job)
        while True:
            msg = self.read()
            if "result" in msg:
                return msg["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.start({"quit": True})
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)


@dataclass
class Launcher:
    """Starts the bench's processes in one work directory and stops them all at the end."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def _spawn(
        self,
        name: str,
        argv: list[str],
        cpus: set[int] | None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> tuple[subprocess.Popen, Path]:
        log = self.workdir / f"{name}.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AICLIENT_")}
        full_env.update(env or {})
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=cwd or self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                preexec_fn=_pin(cpus),  # only sets the CPU affinity
            )
        return proc, log

    def fake(self, cpus: set[int] | None) -> Proc:
        port_file = self.workdir / "fake.port"
        proc, log = self._spawn(
            "fake", [str(PYTHON), "-m", "bench.fake_upstream", str(port_file)], cpus, {"PYTHONPATH": str(REPO)}, REPO
        )
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake upstream did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.02)
        p = Proc("fake", proc, log, int(port_file.read_text()))
        self.procs.append(p)
        return p

    def mitmdump_floor(self, upstream_port: int, cpus: set[int] | None, *, streaming: bool = False) -> Proc:
        """A bare reverse proxy with no addon. Bare mitmdump buffers whole bodies; `streaming` relays
        them as they arrive (stream_large_bodies=1), as the gateway does for streams."""
        port = free_port()
        name = "mitmdump-floor-streaming" if streaming else "mitmdump-floor"
        argv = [
            str(MITMDUMP),
            "--mode", f"reverse:http://127.0.0.1:{upstream_port}@{port}",
            "--listen-host", "127.0.0.1",
            "-q",
        ]  # fmt: skip
        if streaming:
            argv += ["--set", "stream_large_bodies=1"]
        proc, log = self._spawn(name, argv, cpus, {"HOME": str(self.workdir)})
        p = Proc(name, proc, log, port)
        self.procs.append(p)
        wait_port(port, proc, log)
        return p

    def gateway(
        self,
        name: str,
        config: dict[str, Any],
        cpus: set[int] | None,
        repo: Path = REPO,
        extra_args: tuple[str, ...] = (),
    ) -> Proc:
        port = free_port()
        gw_dir = self.workdir / name
        gw_dir.mkdir(parents=True, exist_ok=True)
        config = {**config, "listen": {"host": "127.0.0.1", "port": port}}
        config_path = gw_dir / "config.yaml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        argv = [str(MITMDUMP), "-s", str(repo / "run.py"), "--set", f"config={config_path}", "-q", *extra_args]
        env = {"HOME": str(gw_dir)}
        if loop := os.environ.get("AICLIENT_MITM_EVENT_LOOP"):  # `asyncio`: bench without uvloop
            env["AICLIENT_MITM_EVENT_LOOP"] = loop
        proc, log = self._spawn(name, argv, cpus, env, gw_dir)
        p = Proc(name, proc, log, port)
        self.procs.append(p)
        wait_port(port, proc, log)
        return p

    def haproxy(self, backends: list[int]) -> Proc:
        exe = shutil.which("haproxy")
        if exe is None:
            raise RuntimeError("haproxy is not installed")
        port = free_port()
        servers = "\n".join(f"  server g{i} 127.0.0.1:{p}" for i, p in enumerate(backends))
        cfg = self.workdir / f"haproxy-{len(backends)}.cfg"
        cfg.write_text(
            "global\n  maxconn 4000\n"
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n"
            f"frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n"
            f"backend be\n  balance roundrobin\n{servers}\n",
            encoding="utf-8",
        )
        proc, log = self._spawn(f"haproxy-{len(backends)}", [exe, "-f", str(cfg), "-db"], None)
        p = Proc("haproxy", proc, log, port)
        self.procs.append(p)
        wait_port(port, proc, log)
        return p

    def redis(self) -> Proc:
        """A redis-server on loopback without persistence, for the shared-state rows."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        port = free_port()
        argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        proc, log = self._spawn("redis", [*argv, "--dir", str(self.workdir)], None)
        p = Proc("redis", proc, log, port)
        self.procs.append(p)
        wait_port(port, proc, log)
        return p

    def stop(self, p: Proc) -> None:
        p.stop()
        if p in self.procs:
            self.procs.remove(p)

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()
