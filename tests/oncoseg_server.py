"""Start ``oncoseg serve`` as a real uvicorn subprocess on a free loopback port, and stop it by PID.

with OncoSegServer(tmp_path, "--pacs", orthanc.url, token="...") as server:
    httpx.get(f"{server.url}/health")
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from orthanc import free_port, stop_process

ONCOSEG = Path(sys.executable).parent / "oncoseg"


class OncoSegServer:
    def __init__(self, workdir: Path, *args: str, token: str | None = None, startup_timeout: float = 180.0):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.token = token
        self.port = free_port()
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self.log_path = self.workdir / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, timeout: float = 300.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def start(self) -> OncoSegServer:
        if not ONCOSEG.is_file():
            raise RuntimeError(f"{ONCOSEG} not found: install the project (pip install -e .[dev])")
        env = dict(os.environ)
        env.pop("ONCOSEG_TOKEN", None)
        if self.token:
            env["ONCOSEG_TOKEN"] = self.token
        command = [str(ONCOSEG), "serve", "--port", str(self.port), "--workdir", str(self.workdir / "work")]
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*command, *self.args], stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"oncoseg serve exited (code {self.process.returncode}):\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"oncoseg serve did not answer /health within {self.startup_timeout} s:\n{self.log()}"
        )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.process, grace=15)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> OncoSegServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
