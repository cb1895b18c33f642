"""Starts the real gateway (`mitmdump -s run.py`) on an OS-assigned loopback port for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
MITMDUMP = Path(sys.executable).parent / "mitmdump"
_LISTENING = re.compile(r"aiclient-mitm listening on (http://\S+)")


@dataclass
class GatewayProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    config_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_gateway(
    workdir: Path, config: dict[str, Any], env: dict[str, str] | None = None, timeout: float = 90.0
) -> GatewayProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    config = {"listen": {"host": "127.0.0.1", "port": 0}, **config}
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_path = workdir / "mitmdump.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AICLIENT_")}
    full_env.update(env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(MITMDUMP), "-s", str(REPO / "run.py"), "--set", f"config={config_path}"],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
        )
    gw = GatewayProcess("", proc, log_path, config_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = _LISTENING.search(gw.log())
        if m:
            gw.url = m.group(1)
            return gw
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{gw.log()}")
        time.sleep(0.05)
    gw.stop()
    raise RuntimeError(f"gateway did not start within {timeout}s:\n{gw.log()}")
