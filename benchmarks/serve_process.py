"""A real ``oncoseg serve`` on a free loopback port for the benchmarks, started and stopped by its PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ONCOSEG = Path(sys.executable).parent / "oncoseg"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """``oncoseg serve --port P --workdir WORKDIR/work OPTIONS``, its output in WORKDIR/server.log; the constructor
    returns once /health answers (SystemExit when it exits or does not answer within 300 s)."""

    def __init__(self, options: list[str], workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "server.log", "w", encoding="utf-8")  # noqa: SIM115
        command = [
            str(ONCOSEG),
            "serve",
            "--port",
            str(self.port),
            "--workdir",
            str(workdir / "work"),
            *options,
        ]
        env = {k: v for k, v in os.environ.items() if k != "ONCOSEG_TOKEN"}
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"oncoseg serve exited: see {workdir / 'server.log'}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit("oncoseg serve did not start within 300 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()
