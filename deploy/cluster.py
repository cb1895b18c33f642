"""`make cluster`: N gateway processes + Redis + HAProxy on loopback, from one config.yaml.

Each process gets a copy of the config beside the original (so relative credential paths still
resolve) with its own listen port and state_dir, and `state: {backend: redis}` pointing at one
Redis (a local `redis-server` without persistence, started here, unless --redis-url names one).
HAProxy listens on the config's own port. Ctrl-C stops everything this started.

    python deploy/cluster.py --processes 2 [--config config.yaml] [--redis-url redis://host:6379/0]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
MITMDUMP = Path(sys.executable).parent / "mitmdump"


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def haproxy_config(port: int, backends: list[int]) -> str:
    servers = "\n".join(f"  server g{i + 1} 127.0.0.1:{p} check" for i, p in enumerate(backends))
    return (
        "global\n  maxconn 4000\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\n"
        f"frontend gateway\n  bind 127.0.0.1:{port}\n  default_backend gateways\n"
        f"backend gateways\n  balance roundrobin\n  option httpchk GET /health\n{servers}\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--config", type=Path, default=REPO / "config.yaml")
    p.add_argument("--redis-url", help="an existing Redis (default: start redis-server on 127.0.0.1:6390)")
    p.add_argument("--redis-port", type=int, default=6390)
    args = p.parse_args()
    config_path = args.config.resolve()
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    front = int((config.get("listen") or {}).get("port") or 3000)
    procs: list[tuple[str, subprocess.Popen]] = []

    def stop_all() -> None:
        for _name, proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for _name, proc in reversed(procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def interrupted(*_: object) -> None:
        raise SystemExit(0)  # the finally below stops everything

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    try:
        redis_url = args.redis_url
        if redis_url is None:
            exe = shutil.which("redis-server") or sys.exit(
                "redis-server is not installed: apt-get install redis-server"
            )
            cmd = [exe, "--port", str(args.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            procs.append(("redis", subprocess.Popen(cmd, stdout=subprocess.DEVNULL)))
            wait_port(args.redis_port, procs[-1][1], "redis-server")
            redis_url = f"redis://127.0.0.1:{args.redis_port}/0"
        ports = [front + 1 + i for i in range(args.processes)]
        for i, port in enumerate(ports):
            own = {
                **config,
                "listen": {**(config.get("listen") or {}), "host": "127.0.0.1", "port": port},
                "state_dir": str(Path(str(config.get("state_dir") or "state")) / f"gw{i + 1}"),
                "state": {**(config.get("state") or {}), "backend": "redis", "redis_url": redis_url},
            }
            path = config_path.with_name(f".cluster-gw{i + 1}.yaml")
            path.write_text(yaml.safe_dump(own, sort_keys=False), encoding="utf-8")
            path.chmod(0o600)  # it may hold keys
            cmd = [str(MITMDUMP), "-s", str(REPO / "run.py"), "--set", f"config={path}", "-q"]
            procs.append((f"gw{i + 1}", subprocess.Popen(cmd, cwd=REPO)))
        for (name, proc), port in zip(procs[-len(ports) :], ports, strict=True):
            wait_port(port, proc, name)
        exe = shutil.which("haproxy") or sys.exit("haproxy is not installed (apt-get install haproxy)")
        cfg = config_path.with_name(".cluster-haproxy.cfg")
        cfg.write_text(haproxy_config(front, ports), encoding="utf-8")
        procs.append(("haproxy", subprocess.Popen([exe, "-f", str(cfg), "-db"])))
        wait_port(front, procs[-1][1], "haproxy")
        print(f"cluster: http://127.0.0.1:{front} -> {len(ports)} gateways {ports}, state on Redis", flush=True)
        while all(proc.poll() is None for _, proc in procs):
            time.sleep(1)
        dead = [name for name, proc in procs if proc.poll() is not None]
        print(f"cluster: {', '.join(dead)} exited; stopping the rest", flush=True)
    finally:
        stop_all()


if __name__ == "__main__":
    main()
