"""Adversarial run: hostile inputs (see hostile_inputs.py) against the CLI and one real `oncoseg serve`.

    .venv/bin/python benchmarks/adversarial.py            # everything (>= 500 inputs), ~10 min
    .venv/bin/python benchmarks/adversarial.py --quick    # a representative subset (~70 inputs), ~2 min

Counts per category: tracebacks (CLI stderr, server log), HTTP 500s, CLI exit codes other than 0/2 (or 0 on an
input that must be refused), server answers of the wrong class, partial or destroyed outputs, the fake PHI in
logs, file contents leaked or files written outside the work folder, crashes (process killed, time-outs, server
deaths); then whether the server is alive and its peak RSS against the budget. Writes
benchmarks/results/adversarial.json (adversarial-quick.json for --quick) and exits 1 when a count that must be 0
is not.

The CLI runs in-process (``oncoseg.cli.main``) in a persistent child process capped with RLIMIT_AS (a memory
bomb kills the child, not the run; it is restarted), plus a few real ``oncoseg`` subprocesses. The server is
started with tests/oncoseg_server.py and its address space capped the same way after start-up.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for extra in (HERE, REPO / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from hostile_inputs import (
    ENVIRON,
    ESCAPE_MARK,
    PASSWD,
    PHI_STRINGS,
    Case,
    Request,
    category_order,
    generate,
    http_requests,
)

COLUMNS = ("tracebacks", "http_500", "bad_exit", "bad_status", "outputs", "phi", "leaks", "crashes")
KIND_COLUMN = {
    "traceback": "tracebacks",
    "http500": "http_500",
    "exit": "bad_exit",
    "status": "bad_status",
    "output": "outputs",
    "phi": "phi",
    "leak": "leaks",
    "escape": "leaks",
    "crash": "crashes",
    "timeout": "crashes",
    "server-died": "crashes",
    "rss": "crashes",
}
GIB = 2**30
CLI_AS_LIMIT = 7 * GIB
SERVER_AS_LIMIT = 6 * GIB


@dataclass
class Failure:
    category: str
    input: str
    target: str  # cli | cli-subprocess | server
    kind: str
    evidence: str

    def as_dict(self) -> dict[str, str]:
        return dict(vars(self))


@dataclass
class Tally:
    """Inputs tried and failures, shared by the CLI thread and the server thread."""

    tried: dict[str, set[str]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    phi_echo: list[str] = field(default_factory=list)  # the typed path echoed on stderr (informational)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempt(self, category: str, name: str) -> None:
        with self.lock:
            self.tried.setdefault(category, set()).add(name)

    def fail(self, category: str, name: str, target: str, kind: str, evidence: str) -> None:
        evidence = " ".join(str(evidence).split())[:240]
        with self.lock:
            self.failures.append(Failure(category, name, target, kind, evidence))


def capped(command: list[str], limit: int) -> list[str]:
    """``command`` run under prlimit with its address space capped (a memory bomb kills only it)."""
    return ["prlimit", f"--as={limit}", "--", *command]


def traceback_line(text: str) -> str:
    """The exception line that ends the first traceback in ``text`` (else its first line)."""
    lines = text[text.find("Traceback") :].splitlines()
    for line in lines[1:]:
        if line and not line.startswith((" ", "\t", "Traceback", "The above", "During handling")):
            return line
    return lines[0] if lines else ""


def phi_found(text: str) -> list[str]:
    return [s for s in PHI_STRINGS if s in text]


# ---------------------------------------------------------------------------------------------- CLI
def worker_main() -> None:
    """Child process: for each JSON job on stdin run ``oncoseg.cli.main(argv)`` with fd 1/2 captured."""
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    from oncoseg.cli import main

    channel.write('{"ready": true}\n')
    channel.flush()
    while line := sys.stdin.readline():
        job = json.loads(line)
        os.chdir(job["cwd"])
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            sys.stdout.flush()
            sys.stderr.flush()
            saved = os.dup(1), os.dup(2)
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            start = time.perf_counter()
            try:
                rc = main(job["argv"])
            except SystemExit as stop:
                rc = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException:  # noqa: BLE001 - what the real command prints before exiting with 1
                traceback.print_exc()
                rc = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        answer = {"rc": 0 if rc is None else rc, "stderr": stderr, "seconds": time.perf_counter() - start}
        channel.write(json.dumps(answer) + "\n")
        channel.flush()


class CliWorker:
    """A persistent `worker_main` child; restarted after it dies or times out."""

    def __init__(self, log: Path):
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "a", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                capped([sys.executable, str(Path(__file__).resolve()), "--worker"], CLI_AS_LIMIT),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=tempfile.gettempdir(),
                env={**os.environ, "OMP_NUM_THREADS": "1"},  # the other core is the server's
            )
        if self._answer(180) is None:
            raise RuntimeError(f"the CLI worker did not start; see {self.log}")

    def _answer(self, timeout: float) -> dict | None:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        return json.loads(line) if line else None

    def run(self, argv: list[str], cwd: Path, timeout: float) -> dict[str, Any]:
        if self.process is None or self.process.poll() is not None:
            self.start()
        self.process.stdin.write((json.dumps({"argv": argv, "cwd": str(cwd)}) + "\n").encode())
        self.process.stdin.flush()
        answer = self._answer(timeout)
        if answer is not None:
            return answer
        if self.process.poll() is None:  # hung: kill it by its pid
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            return {"rc": None, "stderr": "", "timeout": True}
        code = self.process.wait()
        return {"rc": None, "stderr": "", "died": code}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def snapshot(folder: Path) -> dict[str, str]:
    files = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        files[key] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return files


class CliPhase:
    """Every case through ``oncoseg info`` and ``oncoseg segment`` with an output folder of old results."""

    def __init__(self, root: Path, tally: Tally, real_subprocesses: int, timeout: float):
        self.root = root
        self.tally = tally
        self.out = root / "cli-out"
        self.out.mkdir(parents=True, exist_ok=True)
        for name in ("existing_mask.nii.gz", "existing_mask.png", "existing_overlay.png"):
            (self.out / name).write_bytes(f"an earlier result: {name}\n".encode() * 100)
        self.worker = CliWorker(root / "cli-worker.log")
        self.real_subprocesses = real_subprocesses
        self.timeout = timeout
        self.runs = 0
        self.seconds = 0.0
        self.timings: list[tuple[float, str]] = []

    def argv_for(self, case: Case, command: str, overlay: Path) -> list[str]:
        if command == "info":
            return ["info", str(case.path)]
        output = self.out / ("existing_mask.png" if case.dims == 2 else "existing_mask.nii.gz")
        prompt = case.prompt_args if case.prompt_args is not None else [f"--box={case.box}"]
        return ["segment", str(case.path), *prompt, "-o", str(output), "--overlay", str(overlay), "-q"]

    def run(self, cases: list[Case]) -> None:
        start = time.perf_counter()
        try:
            chosen = [c for c in cases if c.cli and c.path is not None]
            for index, case in enumerate(chosen):
                self.tally.attempt(case.category, case.name)
                commands = ["segment"] if case.prompt_args is not None else ["info", "segment"]
                for command in commands:
                    if command == "segment" and case.box is None and case.prompt_args is None:
                        continue
                    overlay = self.out / f"new_overlay_{index}.png"
                    argv = self.argv_for(case, command, overlay)
                    self.check(case, command, argv, lambda a: self.worker.run(a, self.out, self.timeout))
            for case in self.pick_real(chosen):
                argv = self.argv_for(case, "segment", self.out / "new_overlay_real.png")
                self.check(case, "segment", argv, self.real_run, target="cli-subprocess")
        except Exception:  # noqa: BLE001
            self.tally.fail("control", "cli-harness", "cli", "crash", traceback.format_exc().splitlines()[-1])
        finally:
            self.worker.stop()
            self.seconds = time.perf_counter() - start

    def pick_real(self, cases: list[Case]) -> list[Case]:
        """Real ``oncoseg`` processes for a few telling cases (a valid one, external data, a bomb, a cut file)."""
        wanted = [
            "mha-passwd.mha",
            "nii-gz-1000cubed-header-only.nii.gz",
            "hippocampus.nii.gz",
            "hippocampus-nii-at-351.nii",
            "box-nan",
        ]
        by_name = {c.name: c for c in cases}
        return [by_name[n] for n in wanted if n in by_name][: self.real_subprocesses]

    def real_run(self, argv: list[str]) -> dict[str, Any]:
        command = [str(Path(sys.executable).parent / "oncoseg"), *argv]
        try:
            done = subprocess.run(
                capped(command, CLI_AS_LIMIT),
                check=False,
                cwd=self.out,
                capture_output=True,
                timeout=max(self.timeout, 180),
            )
        except subprocess.TimeoutExpired:
            return {"rc": None, "stderr": "", "timeout": True}
        rc = done.returncode
        return {
            "rc": rc,
            "stderr": done.stderr.decode("utf-8", "replace"),
            **({"died": rc} if rc < 0 else {}),
        }

    def check(self, case: Case, command: str, argv: list[str], runner, target: str = "cli") -> None:
        before = snapshot(self.out)
        started = time.perf_counter()
        result = runner(argv)
        self.runs += 1
        after = snapshot(self.out)
        fail = lambda kind, evidence: self.tally.fail(
            case.category, case.name, target, kind, f"{command}: {evidence}"
        )
        rc, stderr = result["rc"], result.get("stderr", "")
        expect = case.cli_expect or case.expect
        self.timings.append(
            (round(time.perf_counter() - started, 2), f"{case.category}/{case.name} {command}")
        )
        if result.get("timeout"):
            fail("timeout", f"no answer within {time.perf_counter() - started:.0f} s (killed)")
        elif "died" in result:
            fail("crash", f"process died with code {result['died']} (signal {-result['died']} if negative)")
        if "Traceback" in stderr:
            fail("traceback", traceback_line(stderr))
        if rc is not None:
            last = stderr.strip().splitlines()[-1][:200] if stderr.strip() else "(no stderr)"
            if rc not in (0, 2):
                fail("exit", f"exit {rc}; {last}")
            elif rc == 0 and expect == "refuse":
                fail("exit", "exit 0 on an input that must be refused")
            elif rc == 2 and expect == "accept":
                fail("exit", f"exit 2 on a valid input: {last}")
            if rc == 0 and case.external and command == "info":
                fail("leak", f"read {case.external} as pixels (exit 0)")
        phi = phi_found(stderr)
        if phi:
            scrubbed = stderr
            for part in argv:  # what the user typed, echoed back: reported apart (phi_echoed)
                for typed in (part, part.partition("=")[2], Path(part).name):
                    scrubbed = scrubbed.replace(typed, "") if typed else scrubbed
            if phi_found(scrubbed):
                fail("phi", f"{', '.join(phi_found(scrubbed))} on stderr: {_line_with(stderr, phi[0])}")
            else:
                self.tally.phi_echo.append(f"{case.category}/{case.name} ({command})")
        tmp = [name for name in after if Path(name).name.startswith(".tmp-")]
        if tmp:
            fail("output", f"temporary file left: {tmp[0]}")
        new = sorted(set(after) - set(before))
        changed = [name for name in before if name in after and before[name] != after[name]]
        gone = [name for name in before if name not in after]
        if rc != 0:
            if changed or gone:
                fail("output", f"exit {rc} but earlier output changed/removed: {(changed + gone)[0]}")
            if [n for n in new if not Path(n).name.startswith(".tmp-")]:
                fail("output", f"exit {rc} but new file written: {new[0]}")
        elif command == "info" and new:
            fail("output", f"info wrote a file: {new[0]}")
        for name in new:  # keep the folder small: successful outputs beyond the old results go
            path = self.out / name
            if path.is_file() and name.startswith("new_overlay"):
                path.unlink()


def _line_with(text: str, needle: str) -> str:
    return next((line.strip() for line in text.splitlines() if needle in line), "")[:200]


# ---------------------------------------------------------------------------------------------- server
def vm_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, VmSize of a process in bytes."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "VmSize"):
                values[key] = int(rest.split()[0]) * 1024
    return values


class ServerPhase:
    def __init__(self, root: Path, tally: Tally, budget_mb: float, max_upload_mb: float, timeout: float):
        self.root = root
        self.tally = tally
        self.budget_mb = budget_mb
        self.max_upload_mb = max_upload_mb
        self.timeout = timeout
        self.server = None
        self.servers = []
        self.log_offset = 0
        self.deaths = 0
        self.info: dict[str, Any] = {}
        self.ids: dict[str, str] = {}

    # -------------------------------------------------------------- process
    def start(self) -> None:
        from oncoseg_server import OncoSegServer

        args = ["--memory-budget-mb", f"{self.budget_mb:g}", "--max-upload-mb", f"{self.max_upload_mb:g}"]
        server = OncoSegServer(self.root / f"serve-{len(self.servers)}", *args, "--max-queue", "4")
        server.start()
        status = vm_status(server.process.pid)
        cap = max(SERVER_AS_LIMIT, status["VmSize"] + 2 * GIB)
        resource.prlimit(server.process.pid, resource.RLIMIT_AS, (cap, cap))
        self.server, self.log_offset = server, 0
        self.servers.append(server)
        self.info.setdefault("starts", []).append(
            {
                "rss_after_start_mb": status["VmRSS"] / 2**20,
                "vmsize_mb": status["VmSize"] / 2**20,
                "address_space_cap_mb": cap / 2**20,
            }
        )
        self.client = server.client(timeout=self.timeout)
        self.setup()

    def alive(self) -> bool:
        if self.server.process.poll() is not None:
            return False
        try:
            return self.client.get("/health", timeout=15).status_code == 200
        except Exception:  # noqa: BLE001
            return False

    def new_log(self) -> str:
        with open(self.server.log_path, "rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        self.log_offset += len(data)
        return data.decode("utf-8", "replace")

    def check_log(self, category: str, name: str, status: int | None = 200) -> None:
        if status is None or status >= 500:
            time.sleep(0.5)  # uvicorn logs an exception after the answer has gone
        chunk = self.new_log()
        if "Traceback" in chunk:
            self.tally.fail(category, name, "server", "traceback", "server log: " + traceback_line(chunk))
        found = phi_found(chunk)
        if found:
            self.tally.fail(
                category, name, "server", "phi", f"{found[0]} in server log: {_line_with(chunk, found[0])}"
            )

    def after_error(self, category: str, name: str, error: Exception) -> None:
        """A request failed at the transport level: time-out, or the server died (then it is restarted)."""
        if isinstance(error, Exception) and "Timeout" in type(error).__name__:
            self.tally.fail(category, name, "server", "timeout", f"no answer within {self.timeout:.0f} s")
        if not self.alive():
            code = self.server.process.poll()
            self.deaths += 1
            self.tally.fail(
                category, name, "server", "server-died", f"server gone (exit code {code}) after this input"
            )
            self.check_log(category, name)
            self.server.stop()
            self.start()
        elif "Timeout" not in type(error).__name__:
            self.tally.fail(
                category, name, "server", "status", f"transport error {type(error).__name__}: {error}"
            )

    # -------------------------------------------------------------- requests
    def setup(self) -> None:
        """A valid volume (with a result) and picture for the request cases; MONAI Label's datastore image."""
        seeds = self.root / "inputs-root" / "seeds"
        vol, pic = seeds / "hippocampus.nii.gz", seeds / "ultrasound.png"
        for key, path in (("vol", vol), ("pic", pic)):
            answer = self.client.post("/api/images/upload", files={"file": (path.name, path.read_bytes())})
            answer.raise_for_status()
            self.ids[key] = answer.json()["image_id"]
        self.client.post(f"/api/images/{self.ids['vol']}/segment", json={"z": 14, "box": [5, 5, 31, 35]})
        self.client.put(
            "/datastore/", params={"image": "advvol"}, files={"file": (vol.name, vol.read_bytes())}
        )
        self.new_log()

    def judge(
        self, category: str, name: str, status: int | None, expect: str, body: bytes, what: str
    ) -> None:
        if status is not None and status >= 500 and status != 503:
            detail = body[:160].decode("utf-8", "replace")
            self.tally.fail(category, name, "server", "http500", f"{what}: HTTP {status} {detail}")
        elif status is not None and expect in ("4xx", "refuse") and status < 400:
            self.tally.fail(
                category, name, "server", "status", f"{what}: HTTP {status} for an input to refuse"
            )
        elif status is not None and expect in ("2xx", "accept") and status >= 300:
            detail = body[:160].decode("utf-8", "replace")
            self.tally.fail(
                category, name, "server", "status", f"{what}: HTTP {status} on a valid input: {detail}"
            )
        if b"root:x:0:0" in body:
            self.tally.fail(category, name, "server", "leak", f"{what}: /etc/passwd content in the answer")

    def upload_case(self, case: Case) -> None:
        self.tally.attempt(case.category, case.name)
        files = {"file": (case.upload_name, case.upload.read_bytes())}
        try:
            answer = self.send("POST", "/api/images/upload", files=files)
        except Exception as error:  # noqa: BLE001
            self.after_error(case.category, case.name, error)
            self.check_log(case.category, case.name, None)
            return
        self.judge(case.category, case.name, answer.status_code, case.expect, answer.content, "upload")
        if answer.status_code == 201:
            self.follow_up(case, answer.json())
        self.check_log(case.category, case.name, answer.status_code)

    def send(self, method: str, path: str, **kw):
        """One request; sent again once on a fresh connection when the kept-alive one was closed (after an
        earlier error the server may drop it: that earlier request is the one counted)."""
        import httpx

        try:
            return self.client.request(method, path, **kw)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError):
            if not self.alive():
                raise
            self.client.close()
            self.client = self.server.client(timeout=self.timeout)
            return self.client.request(method, path, **kw)

    def follow_up(self, case: Case, described: dict) -> None:
        """An accepted upload: render a slice (leak check for external data), segment the valid kinds."""
        image_id = described["image_id"]
        z = described["num_slices"] // 2 if described.get("is_3d") else 0
        window = "127.5,255" if case.external else None
        try:
            answer = self.client.get(
                f"/api/images/{image_id}/slices/{z}", params={"window": window} if window else {}
            )
            self.judge(case.category, case.name, answer.status_code, "any", answer.content, "slice")
            if case.external and answer.status_code == 200:
                self.leak_check(case, answer.content)
            if case.category in ("control", "degenerate") and case.box:
                numbers = [float(v) for v in case.box.split(",")]
                body = {"box": numbers[:4], **({"z": int(numbers[4])} if len(numbers) > 4 else {})}
                answer = self.client.post(f"/api/images/{image_id}/segment", json=body)
                self.judge(
                    case.category, case.name, answer.status_code, case.expect, answer.content, "segment"
                )
        except Exception as error:  # noqa: BLE001
            self.after_error(case.category, case.name, error)

    def leak_check(self, case: Case, png: bytes) -> None:
        import numpy as np
        from PIL import Image

        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16).ravel()
        if case.external == PASSWD:
            secret = np.frombuffer(Path(PASSWD).read_bytes(), np.uint8).astype(np.int16)
            n = min(len(secret), len(pixels))
            leaked = n > 32 and np.mean(np.abs(pixels[:n] - secret[:n]) <= 1) > 0.9
        elif (
            case.external == ENVIRON
        ):  # text-like bytes with several NAME=value pairs, never compared as such
            printable = np.mean((pixels >= 31) & (pixels <= 127))
            leaked = printable > 0.9 and int(np.sum(np.abs(pixels - 61) <= 1)) >= 2 and np.ptp(pixels) > 0
        else:
            leaked = False
        if leaked:
            self.tally.fail(
                case.category, case.name, "server", "leak", f"the slice shows the bytes of {case.external}"
            )

    def request(self, req: Request) -> None:
        self.tally.attempt(req.category, req.name)
        path = req.path.format(**self.ids)
        if req.raw is not None:
            status, body = self.raw_request(req)
        else:
            try:
                answer = self.send(
                    req.method,
                    path,
                    json=req.json,
                    content=req.content,
                    headers=req.headers,
                    params=req.params,
                    data=req.data,
                    files=req.files,
                    timeout=req.timeout,
                )
                status, body = answer.status_code, answer.content
            except Exception as error:  # noqa: BLE001
                self.after_error(req.category, req.name, error)
                self.check_log(req.category, req.name, None)
                return
        self.judge(req.category, req.name, status, req.expect, body, f"{req.method} {req.path[:60]}")
        self.check_log(req.category, req.name, status)

    def raw_request(self, req: Request) -> tuple[int | None, bytes]:
        data = b""
        try:
            with socket.create_connection(("127.0.0.1", self.server.port), timeout=10) as sock:
                try:
                    sock.sendall(req.raw)
                except OSError:
                    pass  # the server may answer and close before reading a body it refuses
                sock.shutdown(socket.SHUT_WR)
                while chunk := sock.recv(65536):
                    data += chunk
        except TimeoutError:
            if not data:
                self.tally.fail(req.category, req.name, "server", "status", "no answer within 10 s")
        except OSError:
            pass
        first = data.split(b"\r\n", 1)[0].split()
        status = int(first[1]) if len(first) > 1 and first[1].isdigit() else None
        return status, data[data.find(b"\r\n\r\n") + 4 :] if status else b""

    # -------------------------------------------------------------- the phase
    def run(self, cases: list[Case], requests: list[Request]) -> None:
        start = time.perf_counter()
        escapes_before = set(_escape_candidates())
        try:
            self.start()
            for req in requests:
                self.request(req)
            for case in cases:
                if case.upload is not None:
                    self.upload_case(case)
            self.finish(escapes_before)
        except Exception:  # noqa: BLE001
            self.tally.fail(
                "control", "server-harness", "server", "crash", traceback.format_exc().splitlines()[-1]
            )
        finally:
            if self.server is not None:
                self.server.stop()
            self.info["seconds"] = time.perf_counter() - start
        for server in self.servers:  # anything logged at shutdown
            log = server.log()
            if "Traceback" in log[self.log_offset if server is self.server else len(log) :]:
                self.tally.fail("control", "shutdown", "server", "traceback", traceback_line(log))

    def finish(self, escapes_before: set[str]) -> None:
        alive = self.alive()
        self.info["alive_at_end"] = alive
        self.info["deaths"] = self.deaths
        if alive:
            status = vm_status(self.server.process.pid)
            peak = status["VmHWM"] / 2**20
            start_rss = self.info["starts"][-1]["rss_after_start_mb"]
            limit = start_rss + self.budget_mb + 1024
            self.info.update(peak_rss_mb=peak, rss_limit_mb=limit, budget_mb=self.budget_mb)
            if peak > limit:
                self.tally.fail(
                    "control",
                    "peak-rss",
                    "server",
                    "rss",
                    f"VmHWM {peak:.0f} MB > start {start_rss:.0f} + budget {self.budget_mb:g} + 1024 MB",
                )
            listed = self.client.get("/api/images").json()
            folders = list((self.server.workdir / "work" / "sessions").glob("*"))
            self.info.update(open_images=len(listed), session_folders=len(folders))
            if len(folders) > len(listed):
                self.tally.fail(
                    "control",
                    "session-folders",
                    "server",
                    "output",
                    f"{len(folders)} session folders for {len(listed)} open images",
                )
        else:
            self.tally.fail(
                "control", "health-at-end", "server", "server-died", "GET /health failed at the end"
            )
        self.check_log("control", "end")
        for server in self.servers:
            for path in server.workdir.rglob("*"):
                if path.name.startswith(".tmp-"):
                    self.tally.fail(
                        "control", "server-workdir", "server", "output", f"temporary file left: {path}"
                    )
                inside_datastore = path.parent.name == "images" and path.parent.parent.name == "datastore"
                if ESCAPE_MARK in path.name and not inside_datastore:
                    self.tally.fail("zip", path.name, "server", "escape", f"file written outside: {path}")
        for path in set(_escape_candidates()) - escapes_before:
            self.tally.fail("zip", Path(path).name, "server", "escape", f"file written outside: {path}")


def _escape_candidates() -> list[str]:
    return [str(p) for folder in (Path("/tmp"), Path("/")) for p in folder.glob(f"{ESCAPE_MARK}*")]


# ---------------------------------------------------------------------------------------------- auth
def auth_phase(root: Path, tally: Tally, quick: bool) -> dict[str, Any]:
    """A token of blanks must stop `oncoseg serve` at start (env variable and --token-file)."""
    from oncoseg_server import OncoSegServer

    results = {}
    blanks = " " * 24
    token_file = root / "blank-token.txt"
    token_file.write_text(blanks + "\n", encoding="utf-8")
    variants = {
        "env-blank-token": ({"token": blanks}, []),
        "file-blank-token": ({}, ["--token-file", str(token_file)]),
    }
    for name, (kwargs, args) in list(variants.items())[: 1 if quick else 2]:
        tally.attempt("auth", name)
        server = OncoSegServer(root / f"auth-{name}", "--no-warmup", *args, startup_timeout=150, **kwargs)
        try:
            server.start()
        except RuntimeError:
            log = server.log()
            results[name] = "refused at start"
            if "Traceback" in log:
                tally.fail("auth", name, "server", "traceback", traceback_line(log))
            continue
        try:
            evidence = ["server started with a token of blanks"]
            login = httpx_post(f"{server.url}/auth/token", data={"username": "x", "password": blanks})
            if login.status_code == 200:
                evidence.append("POST /auth/token with a password of blanks returned the token")
            bare = httpx_get(f"{server.url}/api/images", headers={"Authorization": "Bearer"})
            evidence.append(f"GET /api/images with a bare 'Bearer': HTTP {bare.status_code}")
            tally.fail("auth", name, "server", "status", "; ".join(evidence))
            results[name] = "; ".join(evidence)
        finally:
            server.stop()
    return results


def httpx_post(url: str, **kw):
    import httpx

    return httpx.post(url, timeout=30, **kw)


def httpx_get(url: str, **kw):
    import httpx

    return httpx.get(url, timeout=30, **kw)


# ---------------------------------------------------------------------------------------------- report
def table(tally: Tally) -> tuple[list[dict[str, Any]], dict[str, int]]:
    counts = {cat: Counter() for cat in category_order()}
    for failure in tally.failures:
        counts.setdefault(failure.category, Counter())[KIND_COLUMN[failure.kind]] += 1
    rows = []
    for cat, counted in counts.items():
        tried = len(tally.tried.get(cat, ()))
        if tried or sum(counted.values()):
            rows.append({"category": cat, "tried": tried, **{col: counted[col] for col in COLUMNS}})
    totals = {"tried": sum(r["tried"] for r in rows), **{col: sum(r[col] for r in rows) for col in COLUMNS}}
    return rows, totals


def format_table(rows: list[dict[str, Any]], totals: dict[str, int]) -> str:
    head = ["category", "tried", *COLUMNS]
    widths = [max(len(h), 14 if h == "category" else 5) for h in head]
    lines = [
        "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True)))
    ]
    for row in [*rows, {"category": "TOTAL", **totals}]:
        cells = [str(row[h]) for h in head]
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    return "\n".join(lines)


def git_describe() -> str:
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run(
    workdir: Path,
    quick: bool = False,
    budget_mb: float = 256,
    max_upload_mb: float = 8,
    cli: bool = True,
    server: bool = True,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Generate the inputs under ``workdir``, run them against the CLI and a server, return the report."""
    started = time.perf_counter()
    timeout = timeout or (60.0 if quick else 120.0)
    tally = Tally()
    inputs_root = workdir / "inputs-root"
    cases = generate(inputs_root, quick=quick)
    generated = time.perf_counter() - started
    seeds = inputs_root / "seeds"
    import nibabel

    vol_file_shape = nibabel.load(seeds / "hippocampus.nii.gz").shape
    passwd_mha = next((c.path for c in cases if c.name == "mha-passwd.mha"), None) or (
        inputs_root / "inputs" / "external-data" / "mha-passwd.mha"
    )
    context = {
        "vol_shape": tuple(reversed(vol_file_shape)),
        "vol_ijk": tuple(s // 2 for s in vol_file_shape),
        "upload": (seeds / "hippocampus.nii.gz").read_bytes(),
        "passwd_mha": passwd_mha.read_bytes(),
    }
    requests = http_requests(context, quick=quick)
    cli_phase = CliPhase(workdir, tally, real_subprocesses=2 if quick else 5, timeout=timeout)
    server_phase = ServerPhase(workdir, tally, budget_mb, max_upload_mb, timeout)
    threads = []
    if cli:
        threads.append(threading.Thread(target=cli_phase.run, args=(cases,), name="cli"))
    if server:
        threads.append(threading.Thread(target=server_phase.run, args=(cases, requests), name="server"))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    auth = auth_phase(workdir, tally, quick) if server else {}
    rows, totals = table(tally)
    return {
        "commit": git_describe(),
        "mode": "quick" if quick else "full",
        "seconds": round(time.perf_counter() - started, 1),
        "generate_seconds": round(generated, 1),
        "cli": {
            "runs": cli_phase.runs,
            "seconds": round(cli_phase.seconds, 1),
            "slowest_runs": sorted(cli_phase.timings, reverse=True)[:8],
            "phi_echoed": tally.phi_echo,
        },
        "server": {**server_phase.info, "budget_mb": budget_mb, "max_upload_mb": max_upload_mb},
        "auth": auth,
        "inputs": totals["tried"],
        "table": rows,
        "totals": totals,
        "failures": [
            f.as_dict() for f in sorted(tally.failures, key=lambda f: (f.category, f.input, f.kind))
        ],
        "ok": not any(totals[col] for col in COLUMNS)
        and (not server or server_phase.info.get("alive_at_end")),
    }


def print_report(report: dict[str, Any]) -> None:
    print(format_table(report["table"], report["totals"]))
    server = report["server"]
    if "alive_at_end" in server:
        print(
            f"\nserver alive at end: {server['alive_at_end']}, deaths {server.get('deaths', 0)}, peak RSS "
            f"{server.get('peak_rss_mb', float('nan')):.0f} MB (after start-up "
            f"{server['starts'][-1]['rss_after_start_mb']:.0f} MB, budget {server['budget_mb']:g} MB, limit "
            f"{server.get('rss_limit_mb', float('nan')):.0f} MB)"
        )
    if report["cli"]["phi_echoed"]:
        print(
            f"CLI stderr echoed a typed path/argument holding the fake PHI: {len(report['cli']['phi_echoed'])} runs"
        )
    print(f"{report['inputs']} inputs, {report['seconds']:.0f} s, commit {report['commit']}")
    if report["failures"]:
        print("\nfailures:")
        for f in report["failures"]:
            print(f"  [{f['kind']}] {f['category']}/{f['input']} ({f['target']}): {f['evidence']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a representative subset (~70 inputs)")
    parser.add_argument("--budget-mb", type=float, default=256, help="the server's --memory-budget-mb")
    parser.add_argument("--max-upload-mb", type=float, default=8, help="the server's --max-upload-mb")
    parser.add_argument("--no-cli", action="store_true", help="server only")
    parser.add_argument("--no-server", action="store_true", help="CLI only")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    parser.add_argument(
        "-o", "--output", help="JSON report (default benchmarks/results/adversarial[-quick].json)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main()
        return 0
    with tempfile.TemporaryDirectory(prefix="oncoseg-adversarial-") as temporary:
        workdir = Path(args.keep) if args.keep else Path(temporary)
        report = run(
            workdir, args.quick, args.budget_mb, args.max_upload_mb, not args.no_cli, not args.no_server
        )
    output = Path(args.output or HERE / "results" / f"adversarial{'-quick' if args.quick else ''}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_report(report)
    print(f"report: {output}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
