"""Starts `qserve serve` on a free port for the black-box tests and stops it with SIGTERM.

Used by openai_client_test.py; exits 77 (CTest's skip code) when the model is absent.
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time

SKIP = 77


def model_dir(default_shared):
    shared = os.environ.get("QSERVE_SHARED", default_shared)
    path = os.path.join(shared, "models", "doc-llama-22m")
    if not os.path.exists(os.path.join(path, "config.json")):
        print(f"skipped: {path} not found")
        sys.exit(SKIP)
    return path


class Server:
    def __init__(self, qserve, model, *extra):
        cmd = [qserve, "--threads", "2", "serve", "--model", model, "--port", "0",
               "--served-model-name", "doc-llama", "--max-model-len", "512",
               "--num-gpu-page-blocks", "128", "--device", "cpu", *extra]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.log = []
        port = None
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            self.proc.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        self.url = f"http://127.0.0.1:{port}"
        # Keep draining stderr so the server never blocks on a full pipe.
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self):
        """SIGTERM; returns the exit code (must be 0)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -1
