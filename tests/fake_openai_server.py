"""A stand-in for vLLM's OpenAI server process in lifecycle tests (never used to score anything).

Run as `<python> fake_openai_server.py -m vllm.entrypoints.openai.api_server --port P ...`: it
writes its pid and a child's pid to $FAKE_PIDFILE, then serves /v1/models (with `root`: the --model
argument, as vLLM lists it) and /version. With
FAKE_DIE=1 it prints an error and exits; with FAKE_HANG=1 every other request hangs (a busy server),
after printing `hanging on <method> <path>`.
"""

import json
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port = int(sys.argv[sys.argv.index("--port") + 1])
model = sys.argv[sys.argv.index("--served-model-name") + 1] if "--served-model-name" in sys.argv else "fake"
# vLLM lists the checkpoint it loaded as the model's `root`; without --model the fake lists none.
root = {"root": sys.argv[sys.argv.index("--model") + 1]} if "--model" in sys.argv else {}
key = os.environ.get("FAKE_API_KEY")
# A worker in the server's process group, like vLLM's engine core: stopping must take it too.
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
with open(os.environ["FAKE_PIDFILE"], "w") as handle:
    handle.write(f"{os.getpid()} {child.pid}\n")
print(f"fake server on {port}: TMPDIR={os.environ.get('TMPDIR')} argv {sys.argv[1:]}", flush=True)
if os.environ.get("FAKE_DIE"):
    print("RuntimeError: no kernel for this dtype", flush=True)
    sys.exit(3)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if key and self.headers.get("Authorization") != f"Bearer {key}":
            return self._send(401, {"error": "unauthorized"})
        if self.path == "/v1/models":
            return self._send(200, {"data": [{"id": model, **root}]})
        if self.path == "/version":
            return self._send(200, {"version": "0.0-fake"})
        if os.environ.get("FAKE_HANG"):
            print(f"hanging on {self.command} {self.path}", flush=True)  # tests wait for this line
            time.sleep(3600)
        return self._send(404, {})

    do_POST = do_GET

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


time.sleep(float(os.environ.get("FAKE_STARTUP_S", "0.5")))
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
