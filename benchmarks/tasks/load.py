"""The app under load: N `gradio_client` clients for M seconds against a real `python app.py` on the
loopback, mixing every endpoint: streamed text (some cancelled midway), images, bad requests of both
kinds, `/models`, `/compile_status`, `/metrics`; AOTI switched off and on every few seconds; one model
switch: the server holds one model (``AOTI_MAX_LOADED=1``), the text model for the first half, when
one image request swaps the image model in while text streams are in flight, and the clients go on
with images. Counts what each request met and the server's memory and threads before and after.

    python -m benchmarks load --clients 32 --seconds 90 --out benchmarks/results/load_cpu.json

Each request ends one way: ``answered``; ``refused`` with a message (a bad request at the door, the
queue full, the compile limit); ``cancelled`` by its client; ``unexpected`` (an error without a
message, a bad request answered, a good one refused for no stated reason); ``hung`` (no answer within
``--request-timeout``). The target is zero unexpected and zero hung, and the server answering after.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from benchmarks.harness.servers import start_app, stop_app

TEXT, IMAGE = "tiny-llama-pydoc", "tiny-shapes-unet"

# kind -> (weight, request maker, must be refused), for the first half (the text model held) and the
# second (the image model); a request of the other task would switch models again.
def _text_kinds() -> dict[str, tuple[int, Any, bool]]:
    return {
        "text": (30, lambda r: ("/generate_text", (TEXT, r.choice(["If the file", "Return the number of", "The socket"]),
                                                    r.choice([8, 24, 48]), r.choice([0.0, 0.7]))), False),
        "text_cancelled": (8, lambda r: ("/generate_text", (TEXT, "Return the number of", 120, 0.7)), False),
        "bad_image": (4, lambda r: ("/generate_image", (IMAGE, "a red circle", "64x64", 4, 0, 0)), True),  # refused by the spec alone
    }


def _image_kinds() -> dict[str, tuple[int, Any, bool]]:
    return {
        "image": (30, lambda r: ("/generate_image", (IMAGE, r.choice(["a red circle, top left", "a blue square, center"]),
                                                      "32x32", r.choice([4, 8]), r.randrange(100), 0)), False),
        "bad_image": (6, lambda r: ("/generate_image", r.choice([(IMAGE, "a red circle", "64x64", 4, 0, 0),
                                                                  (IMAGE, "a violet blob", "32x32", 4, 0, 0)])), True),
    }


COMMON = {
    "bad_text": (6, lambda r: ("/generate_text", r.choice([(TEXT, "", 10, 0.5), ("no-such-model", "hi", 10, 0.5),
                                                            (IMAGE, "hi", 10, 0.5)])), True),
    "models": (5, lambda r: ("/models", ()), False),
    "compile_status": (10, lambda r: ("/compile_status", ()), False),
    "metrics": (10, lambda r: ("/metrics", ()), False),
}


class Tally:
    """Outcomes and latencies per endpoint, shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcomes: dict[str, Counter] = defaultdict(Counter)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.unexpected: list[str] = []

    def add(self, kind: str, outcome: str, seconds: float, note: str = "") -> None:
        with self.lock:
            self.outcomes[kind][outcome] += 1
            if outcome in ("answered", "refused"):
                self.latency[f"{kind}/{outcome}"].append(seconds)
            if outcome in ("unexpected", "hung") and len(self.unexpected) < 20:
                self.unexpected.append(f"{kind} {outcome}: {note}"[:300])

    def summary(self) -> dict[str, Any]:
        total = Counter()
        for counts in self.outcomes.values():
            total.update(counts)

        def pct(values: list[float], q: float) -> float | None:
            return round(statistics.quantiles(values, n=100)[q - 1], 3) if len(values) >= 2 else (round(values[0], 3) if values else None)

        return {
            "totals": dict(total),
            "per_endpoint": {kind: {**dict(counts), **{f"{outcome}_{q}_s": pct(self.latency[f"{kind}/{outcome}"], n)
                                                        for outcome in ("answered", "refused") if counts[outcome]
                                                        for q, n in (("p50", 50), ("p95", 95))}}
                             for kind, counts in sorted(self.outcomes.items())},
            "unexpected_examples": self.unexpected,
        }


def _message(exc: BaseException) -> str:
    """What an error tells its caller (an HTTP error's detail included)."""
    response = getattr(exc, "response", None)
    if response is not None:
        try:
            return str(response.json().get("detail", ""))
        except ValueError:
            return response.text[:300]
    return str(exc)


def _one(client, kind: str, api: str, args: tuple, bad: bool, tally: Tally, timeout: float, rng: random.Random) -> None:
    start = time.perf_counter()
    job = client.submit(*args, api_name=api)
    try:
        if kind == "text_cancelled":
            for i, _ in enumerate(job):
                if i >= rng.randint(2, 6):
                    job.cancel()
                    tally.add(kind, "cancelled", time.perf_counter() - start)
                    return
        job.result(timeout=timeout)
    except TimeoutError:
        job.cancel()
        tally.add(kind, "hung", time.perf_counter() - start, f"{api}{args!r:.80} gave no answer in {timeout} s")
        return
    except Exception as exc:  # every refusal must carry its reason
        message = _message(exc)
        outcome = "refused" if message.strip() and not message.startswith(("None", "Traceback")) else "unexpected"
        tally.add(kind, outcome, time.perf_counter() - start, f"{type(exc).__name__}: {message}")
        return
    tally.add(kind, "unexpected" if bad else "answered", time.perf_counter() - start, "a bad request was answered" if bad else "")


def _client_loop(url: str, seed: int, switch_at: float, deadline: float, tally: Tally, timeout: float) -> None:
    from gradio_client import Client

    rng = random.Random(seed)
    client = Client(url, verbose=False)
    while (now := time.monotonic()) < deadline:
        table = {**(_text_kinds() if now < switch_at else _image_kinds()), **COMMON}
        kinds = list(table)
        kind = rng.choices(kinds, [table[k][0] for k in kinds])[0]
        _, make, bad = table[kind]
        api, args = make(rng)
        _one(client, kind, api, args, bad, tally, timeout, rng)


def _toggler(url: str, switch_at: float, deadline: float, every_s: float, tally: Tally, timeout: float,
             stop: threading.Event) -> None:
    """AOTI off, then on, every ``every_s`` seconds, for the model held (the text model, then the image one)."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    on = False
    while not stop.wait(every_s) and time.monotonic() < deadline:
        model = TEXT if time.monotonic() < switch_at else IMAGE
        _one(client, "set_optimization", "/set_optimization", (model, on, False, False), False, tally, timeout, random.Random(0))
        on = not on


def _process(pid: int) -> dict[str, float]:
    """The server's resident memory (MiB) and threads, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 1), "threads": int(fields["Threads"])}


def _states(client) -> dict[str, str]:
    return {r["model"]: r["state"] for r in client.predict(api_name="/compile_status")}


def run(clients: int, seconds: float, toggle_s: float, timeout: float, compile_at_startup: bool,
        cache: Path | None = None) -> dict[str, Any]:
    """``cache``: the server's AOTI cache (default: an empty one, so every build happens during the run)."""
    from gradio_client import Client

    with tempfile.TemporaryDirectory(prefix="aoti-load-") as tmp:
        log = Path(tmp) / "app.log"
        env = {"AOTI_MAX_LOADED": "1", "AOTI_COMPILE_RATE": "1000", "AOTI_STARTUP_MODELS": TEXT,
               "AOTI_COMPILE": "1" if compile_at_startup else "0"}
        proc, url = start_app(log, cache or Path(tmp) / "cache", env)
        try:
            probe = Client(url, verbose=False)
            for _ in range(600):  # the startup compile, then a steady state
                if "compiling" not in _states(probe).values():
                    break
                time.sleep(0.5)
            before = _process(proc.pid)
            tally, stop = Tally(), threading.Event()
            start = time.monotonic()
            switch_at, deadline = start + seconds / 2, start + seconds
            threads = [threading.Thread(target=_client_loop, args=(url, seed, switch_at, deadline, tally, timeout), daemon=True)
                       for seed in range(clients)]
            threads.append(threading.Thread(target=_toggler, args=(url, switch_at, deadline, toggle_s, tally, timeout, stop),
                                            daemon=True))
            half = threading.Timer(seconds / 2, lambda: _one(Client(url, verbose=False), "switch_to_image", "/generate_image",
                                                              (IMAGE, "a green circle, center", "32x32", 4, 0, 0), False, tally,
                                                              timeout, random.Random(0)))
            for t in threads:
                t.start()
            half.start()
            for t in threads:
                t.join(seconds + 2 * timeout)
            stop.set()
            half.join(timeout)
            wall = time.monotonic() - start
            hung_threads = sum(t.is_alive() for t in threads)
            switches = log.read_text().count("engine: unloaded")
            time.sleep(5)  # let finished requests' threads and buffers settle
            after = _process(proc.pid)
            final = probe.predict(TEXT, "If the file", 6, 0.0, api_name="/generate_text")
            rows = {r["model"]: r for r in probe.predict(api_name="/compile_status")}
            return {
                "clients": clients, "seconds": seconds, "wall_s": round(wall, 1), "toggle_every_s": toggle_s,
                "request_timeout_s": timeout, **tally.summary(), "client_threads_still_waiting": hung_threads,
                "model_switches": switches,
                "server_before": before, "server_after": after, "serving_after": bool(final),
                "states_after": {m: {k: rows[m][k] for k in ("state", "reason", "compiles")} for m in (TEXT, IMAGE)},
            }
        finally:
            stop_app(proc, log)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--toggle-every", type=float, default=8.0, help="seconds between AOTI switches")
    parser.add_argument("--request-timeout", type=float, default=180.0, help="seconds after which a request counts as hung")
    parser.add_argument("--no-compile", action="store_true", help="start eager (AOTI_COMPILE=0): a quick smoke run")
    parser.add_argument("--cache", type=Path, default=None,
                        help="the server's AOTI cache (default: an empty one: the switches' builds happen during the run)")
    parser.add_argument("--out", default="benchmarks/results/load_cpu.json")
    args = parser.parse_args(argv)
    import platform

    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
              "command": "python -m benchmarks load " + " ".join(argv or []),
              **run(args.clients, args.seconds, args.toggle_every, args.request_timeout, not args.no_compile, args.cache)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("totals", "serving_after", "server_before", "server_after")}))


if __name__ == "__main__":
    main()
