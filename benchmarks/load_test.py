"""Load test of `t2arec serve` on loopback: concurrent clients for a bounded time and request count.

    python benchmarks/load_test.py --checkpoint runs/latest/checkpoint --clients 8 --duration 30

Starts the server (`python -m t2arec.cli serve`, ``--align-scope`` request by default) on a free
127.0.0.1 port, waits for /health, sends two probe requests alone (one user; four users), then runs
``--clients`` threads that each post real test-split histories from the checkpoint's own dataset
(or, when that data cannot be read, synthetic histories built from /metadata's item sample) until
``--duration`` seconds or ``--max-requests`` requests. Every ``--probe-every``-th request of a client
is one of the probes instead, sent amid the other clients' traffic, and its answer is compared with
the answer it got alone (same top-k; largest score difference). Then it checks that /health's
parameter digest equals the checkpoint's, computed offline, and that the probes sent alone again
return exactly what they returned before the load.

Prints one JSON object (throughput, p50/p95/p99 latency, errors, status codes, the probes under
load, server RSS before and after, micro-batch counts) and exits 1 on any error or mismatch; in
request scope a probe answered under load with another top-k or a score more than 1e-6 away is a
mismatch (in batch scope it is reported only: there the answer depends on the micro-batch). The
server is always stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from t2arec.checkpoint import load_checkpoint
from t2arec.serve.recommender import state_digest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory (VmRSS) and its peak (VmHWM) of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def dataset_histories(payload: dict[str, Any], max_history: int) -> list[dict[str, Any]]:
    """Test-split users of the checkpoint's own data: raw ids, raw timestamps, now = target time."""
    from t2arec.pipeline import config_from_dict, load_data, remap_items

    cfg = config_from_dict(payload["config"])
    data = remap_items(load_data(cfg), payload["item_ids"])
    ids = payload["item_ids"]
    return [{"items": [ids[i] for i in items[:-1][-max_history:]],
             "timestamps": [float(t) for t in times[:-1][-max_history:]], "now": float(times[-1])}
            for items, times in zip(data.items, data.times)]


def synthetic_histories(sample: list[Any], count: int = 200, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    users = []
    for _ in range(count):
        n = rng.randint(1, 30)
        times = np.cumsum([1_700_000_000.0] + [rng.expovariate(1 / 3600) for _ in range(n - 1)]).tolist()
        users.append({"items": [rng.choice(sample) for _ in range(n)], "timestamps": times,
                      "now": times[-1] + rng.expovariate(1 / 3600)})
    return users


def _die_with_parent() -> None:
    """In the server's process: receive SIGTERM when the load test dies, however it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_server(args: argparse.Namespace, port: int, log: Any) -> subprocess.Popen:
    command = [sys.executable, "-m", "t2arec.cli", "serve", "--checkpoint", str(args.checkpoint),
               "--host", "127.0.0.1", "--port", str(port), "--max-batch-users", str(args.max_batch_users),
               "--max-wait-ms", str(args.max_wait_ms), "--align-scope", args.align_scope, "--no-access-log"]
    if args.align:
        command.append("--align")  # force the checkpoint's stored step (when none was chosen on validation)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_die_with_parent)


def wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not healthy within {timeout:g} s")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)


SCORE_TOLERANCE = 1e-6


def compare_answers(alone: dict[str, Any], got: dict[str, Any]) -> tuple[bool, float]:
    """(same top-k for every user, largest absolute score difference) of two /recommend answers."""
    same, gap = True, 0.0
    for a, b in zip(alone["results"], got["results"], strict=True):
        same &= a["items"] == b["items"]
        if len(a["scores"]) == len(b["scores"]):
            gap = max([gap, *(abs(x - y) for x, y in zip(a["scores"], b["scores"]))])
    return same, gap


def run_clients(url: str, histories: list[dict[str, Any]], args: argparse.Namespace,
                probes: list[tuple[dict[str, Any], dict[str, Any]]] = ()) -> dict[str, Any]:
    """``args.clients`` threads posting until the deadline or ``args.max_requests`` in total; every
    ``args.probe_every``-th request of a client is a probe (body, its answer alone), checked."""
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    sent = [0, 0]  # requests, users
    checked = {"sent": 0, "same_top_k": 0, "within_tolerance": 0, "max_score_diff": 0.0}
    deadline = time.monotonic() + args.duration

    def client(number: int) -> None:
        rng = random.Random(args.seed + number)
        with httpx.Client(base_url=url, timeout=args.request_timeout) as http:
            count = 0
            while time.monotonic() < deadline:
                count += 1
                probe = probes[rng.randrange(len(probes))] if probes and count % args.probe_every == 0 else None
                body = probe[0] if probe else {"users": rng.sample(histories, min(args.users_per_request,
                                                                                    len(histories))), "k": args.k}
                with lock:
                    if sent[0] >= args.max_requests:
                        return
                    sent[0] += 1
                    sent[1] += len(body["users"])
                start = time.perf_counter()
                answer = None
                try:
                    response = http.post("/recommend", json=body)
                    status = str(response.status_code)
                    answer = response.json() if response.status_code == 200 and probe else None
                except httpx.HTTPError as err:
                    status = type(err).__name__
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    statuses[status] = statuses.get(status, 0) + 1
                    if answer is not None:
                        same, gap = compare_answers(probe[1], answer)
                        checked["sent"] += 1
                        checked["same_top_k"] += same
                        checked["within_tolerance"] += same and gap <= SCORE_TOLERANCE
                        checked["max_score_diff"] = max(checked["max_score_diff"], gap)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(args.clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=args.duration + args.request_timeout + 5)
    wall = time.perf_counter() - began
    ms = np.asarray(latencies) * 1000
    done = len(latencies)
    return {"wall_seconds": round(wall, 2), "requests": done, "users": sent[1],
            "requests_per_s": round(done / wall, 1), "users_per_s": round(sent[1] / wall, 1),
            "latency_ms": {q: round(float(np.percentile(ms, int(q[1:]))), 1) if done else None
                           for q in ("p50", "p95", "p99")} | {"max": round(float(ms.max()), 1) if done else None},
            "status_codes": statuses, "errors": sum(v for k, v in statuses.items() if k != "200"),
            "probes_under_load": checked}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop after this many requests")
    parser.add_argument("--users-per-request", type=int, default=1)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-batch-users", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--align-scope", choices=["request", "batch"], default="request",
                        help="the server's alignment scope (t2arec serve --align-scope)")
    parser.add_argument("--align", action="store_true", help="serve with --align (force the stored step)")
    parser.add_argument("--probe-every", type=int, default=10,
                        help="every N-th request of a client is a probe, compared with its answer alone")
    parser.add_argument("--max-history", type=int, default=200, help="interactions sent per user")
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument("--startup-timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if (args.clients < 1 or args.duration <= 0 or args.max_requests < 1 or args.users_per_request < 1
            or args.probe_every < 1):
        parser.error("--clients, --duration, --max-requests, --users-per-request and --probe-every must be positive")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so ``finally`` stops the server
    payload = load_checkpoint(args.checkpoint)
    expected_digest = state_digest(payload["state_dict"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    report: dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                              "checkpoint": str(args.checkpoint), "clients": args.clients,
                              "duration_s": args.duration, "max_requests": args.max_requests,
                              "users_per_request": args.users_per_request, "k": args.k,
                              "max_batch_users": args.max_batch_users, "max_wait_ms": args.max_wait_ms,
                              "align_scope": args.align_scope,
                              "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    failures: list[str] = []
    with tempfile.TemporaryFile("w+") as log:
        server = start_server(args, port, log)
        try:
            wait_healthy(url, server, args.startup_timeout)
            try:
                histories = dataset_histories(payload, args.max_history)
                report["histories"] = f"{len(histories)} test-split users of the checkpoint's dataset"
            except (OSError, ValueError) as err:
                histories = synthetic_histories(httpx.get(f"{url}/metadata", timeout=10).json()["item_sample"])
                report["histories"] = f"{len(histories)} synthetic users from /metadata's item sample ({err})"
            bodies = [{"users": histories[:1], "k": args.k},  # one user; four users in one body
                      {"users": histories[1: min(5, len(histories))], "k": args.k}]
            probes = []
            for body in bodies:
                first = httpx.post(f"{url}/recommend", json=body, timeout=args.request_timeout)
                if first.status_code != 200:
                    raise RuntimeError(f"the probe request failed: {first.status_code} {first.text[:300]}")
                probes.append((body, first.json()))
            report["aligns"] = httpx.get(f"{url}/metadata", timeout=10).json()["aligns"]
            report["rss_mb_before"] = rss_mb(server.pid)
            report |= run_clients(url, histories, args, probes)
            report["rss_mb_after"] = rss_mb(server.pid)
            health = httpx.get(f"{url}/health", timeout=args.request_timeout).json()
            report["server"] = {k: health[k] for k in ("batches", "requests", "users")}
            report["server"]["users_per_batch"] = round(health["users"] / max(health["batches"], 1), 2)
            report["parameters_equal_checkpoint"] = health["parameters_sha256"] == expected_digest
            again = [httpx.post(f"{url}/recommend", json=body, timeout=args.request_timeout) for body, _ in probes]
            report["probe_unchanged"] = all(r.status_code == 200 and r.json() == alone
                                            for r, (_, alone) in zip(again, probes))
            checked = report["probes_under_load"]
            if args.align_scope == "request" and checked["within_tolerance"] != checked["sent"]:
                failures.append(f"request scope: {checked['sent'] - checked['within_tolerance']} of {checked['sent']} "
                                f"probes under load differ from their answer alone (largest score difference "
                                f"{checked['max_score_diff']:.3g})")
            if report["errors"]:
                failures.append(f"{report['errors']} failed requests: {report['status_codes']}")
            if not report["requests"]:
                failures.append("no request completed")
            if not report["parameters_equal_checkpoint"]:
                failures.append("the served parameters differ from the checkpoint")
            if not report["probe_unchanged"]:
                failures.append("the probe request returned something else after the load")
        except (RuntimeError, httpx.HTTPError, KeyError, ValueError) as err:
            failures.append(f"{type(err).__name__}: {err}")
        finally:
            stop_server(server)
            if failures:
                log.seek(0)
                report["server_log_tail"] = log.read()[-2000:]
    report["failures"] = failures
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
