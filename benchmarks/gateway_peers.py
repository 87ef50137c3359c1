"""The other proxies ``gateway_overhead.py`` measures next to ``cascade serve``.

- **floor**: the least a Python proxy on the gateway's stack can add. A bare ASGI app (no
  framework) under the same uvicorn, httptools and uvloop, that checks the bearer key and forwards
  the body to the upstream with a keep-alive ``httpx2.AsyncClient`` (the transport the ``openai``
  SDK uses), then returns the upstream's bytes unchanged. No SDK, no parsing, no ledger.
- **litellm**: LiteLLM's proxy (``litellm[proxy]``) from its own virtualenv, started with its
  own CLI (``litellm --config``), one worker, its master key as bearer auth, pointed at the same
  upstream as an ``openai/`` model with ``api_base``. Everything that would reach the internet
  or a database is off (see ``litellm_config``); LiteLLM is never imported here.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = [
    "LITELLM_KEY", "floor_app", "floor_process", "litellm_config", "start_litellm", "wait_ready",
]

# LiteLLM requires its master key to start with "sk-".
LITELLM_KEY = "sk-bench-litellm-key"


def floor_app(upstream: str, key: str) -> Any:
    import httpx2

    client = httpx2.AsyncClient(base_url=upstream, timeout=60.0,
                                limits=httpx2.Limits(max_keepalive_connections=100))
    expected = f"Bearer {key}".encode()
    not_found = {"type": "http.response.start", "status": 404, "headers": []}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan: nothing to set up
            message = await receive()
            while message["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
                message = await receive()
            await client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = dict(scope["headers"])
        if headers.get(b"authorization") != expected:
            await send({**not_found, "status": 401})
            await send({"type": "http.response.body", "body": b""})
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        path = scope["path"].removeprefix("/v1")
        reply = await client.post(path, content=b"".join(chunks),
                                  headers={"content-type": "application/json"})
        await send({"type": "http.response.start", "status": reply.status_code,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(reply.content)).encode())]})
        await send({"type": "http.response.body", "body": reply.content})

    return app


def floor_process(upstream: str, key: str, options: dict[str, str], urls: Any, stop: Any) -> None:
    """Serve the floor proxy until ``stop`` is set; puts its URL on ``urls``."""
    import threading

    import uvicorn

    from cascade.gateway.serve import bind, url_of

    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(floor_app(upstream, key), log_config=None, log_level="warning",
                            access_log=False, ws="none", lifespan="on", **options)
    server = uvicorn.Server(config)
    threading.Thread(target=lambda: (stop.wait(), setattr(server, "should_exit", True)),
                     daemon=True).start()
    urls.put(url_of(sock))
    server.run(sockets=[sock])


def litellm_config(upstream: str) -> dict[str, Any]:
    """One model, ``faq``, on the upstream; no database, spend logs, telemetry or callbacks."""
    return {
        "model_list": [{
            "model_name": "faq",
            "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": upstream,
                               "api_key": "sk-bench", "max_retries": 0},
        }],
        "litellm_settings": {"telemetry": False, "set_verbose": False, "num_retries": 0,
                             "request_timeout": 60, "callbacks": [], "success_callback": [],
                             "failure_callback": []},
        "general_settings": {"master_key": LITELLM_KEY, "disable_spend_logs": True,
                             "disable_error_logs": True, "store_model_in_db": False,
                             "background_health_checks": False},
    }


def start_litellm(python: str, upstream: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """Start LiteLLM's proxy with its CLI from its own virtualenv (``python`` is that venv's)."""
    config = workdir / "litellm.yaml"
    config.write_text(json.dumps(litellm_config(upstream)))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "LITELLM"))}
    env.update({
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the price list at start-up
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DISABLE_SCHEMA_UPDATE": "True",
        "NO_DOCS": "True",
        "PYTHONUNBUFFERED": "1",
    })
    cli = str(Path(python).parent / "litellm")
    log = (workdir / "litellm.log").open("wb")
    return subprocess.Popen(
        [cli, "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
         "--num_workers", "1"],
        env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
    )


def wait_ready(url: str, process: subprocess.Popen[bytes] | None = None,
               timeout_s: float = 120.0) -> None:
    """Poll ``url`` until it answers (any HTTP status).

    Raises:
        RuntimeError: the process exited or nothing answered in time.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the proxy exited with status {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
        except urllib.error.HTTPError:
            return  # it answers, if only to refuse
        except OSError:
            time.sleep(0.25)
        else:
            return
    raise RuntimeError(f"nothing answered at {url} within {timeout_s:g}s")
