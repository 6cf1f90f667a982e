"""The real `ferry` binary as a child process: a config in a temporary folder (SQLite, MLLP and HTTP
on port 0), the ports read from its `ferry: … listening on ADDR` lines, data loaded with
`ferry send`, and SIGTERM at the end."""

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TENANT = "conformance"
LISTENING = re.compile(r"^ferry: (mllp|http) listening on (\S+)$")
START_TIMEOUT_SECS = 30


def config_text(workdir: Path) -> str:
    # `auth` is required in a config file; "none" serves `http.hospital_id`'s data without
    # authentication (tests/fhir_access.rs covers tokens).
    return f"""auth = "none"
shutdown_grace_secs = 5

[store]
url = "sqlite://{workdir}/ferry.db"

[http]
listen = "127.0.0.1:0"
hospital_id = "{TENANT}"

[log]
filter = "warn"

[mappings]
dir = "{REPO / "mappings"}"

[[listeners]]
type = "mllp"
name = "conformance"
listen = "127.0.0.1:0"
hospital_id = "{TENANT}"
"""


class StartError(Exception):
    pass


class Ferry:
    """One running `ferry serve`."""

    def __init__(self, binary: Path, workdir: Path):
        self.binary = binary
        self.workdir = workdir
        self.process = None
        self.mllp = None
        self.http = None

    @property
    def fhir_base(self) -> str:
        return f"http://{self.http}/fhir"

    def start(self):
        config = self.workdir / "ferry.toml"
        config.write_text(config_text(self.workdir))
        self.stderr_path = self.workdir / "ferry.stderr"
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [str(self.binary), "serve", "--config", str(config)],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=environment(),
            )
        # A thread reads stdout, so that waiting for the two lines can time out.
        lines = queue.Queue()
        threading.Thread(target=_read_lines, args=(self.process.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while self.mllp is None or self.http is None:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                line = None
            if line is None or line == "":
                self.process.kill()
                self.process.wait()
                why = "exited" if line == "" else f"printed no address in {START_TIMEOUT_SECS} s"
                raise StartError(f"ferry serve {why}; stderr:\n{self.stderr_path.read_text()}")
            match = LISTENING.match(line.strip())
            if match:
                setattr(self, match.group(1), match.group(2))

    def send(self, files):
        """`ferry send FILE… --to MLLP`; every message must be accepted (exit 0)."""
        run = subprocess.run(
            [str(self.binary), "send", *map(str, files), "--to", self.mllp],
            capture_output=True,
            text=True,
            timeout=60,
            env=environment(),
        )
        if run.returncode != 0:
            raise AssertionError(f"ferry send failed:\n{run.stdout}\n{run.stderr}")
        return run.stderr.strip()

    def stop(self) -> int:
        """SIGTERM and wait for the exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired as e:
            self.process.kill()
            self.process.wait()
            raise AssertionError("ferry serve did not stop within 15 s of SIGTERM") from e


def environment() -> dict:
    """Ours without FERRY_* variables, which would override the config file."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}


def _read_lines(stream, lines):
    """Every line of `stream`, then "" at its end."""
    for line in stream:
        lines.put(line)
    lines.put("")
