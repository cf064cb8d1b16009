"""Preparation time and peak memory on synthetic logs of 1M, 10M and 100M interactions.

    python benchmarks/scale.py --sizes 1e6 1e7 1e8 --out docs/performance/scale.json --plot docs/scaling.png

For each size, writes a CSV log (``user_id,item_id,timestamp``) into a scratch directory, then
prepares it in a fresh Python process (``read_interactions`` + ``prepare``, as ``t2arec train
--data FILE`` does) and records the wall time of each step, the child's peak resident memory
(``wait4``'s ``ru_maxrss``), the prepared counts and a sha256 of the prepared arrays. Prints one
JSON object (and writes it to ``--out``).

The log is heavy-tailed and dated like a real one: users and items are drawn from Zipf-Mandelbrot
laws (a few users with tens of thousands of interactions, most with a handful; a long tail of rare
items), ids are shuffled integers, and each user's interactions fall into sessions (minutes apart)
spread over that user's active span within 2010-2020, in seconds. Rows are written in random
order, in chunks of ``CHUNK`` rows, never as one big list; the same seed gives the same file.

``--baseline-src DIR --baseline-sizes 1e6 1e7`` also prepares those sizes with another copy of the
library (say the commit before the streaming reader: ``git worktree add /tmp/before COMMIT`` then
``--baseline-src /tmp/before/src``), for a before/after comparison; equal sha256 = equal result.
``--keep`` keeps the generated files (in ``--dir``, reused by later runs when present).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

CHUNK = 5_000_000  # rows generated and written at a time
START = 1_262_304_000  # 2010-01-01 00:00 UTC
END = 1_577_836_800  # 2020-01-01 00:00 UTC
USERS_PER_ROW = 1 / 20  # users ~ n / 20 (mean 20 interactions, median about 4)
ITEMS_PER_ROW = 1 / 100
USER_LAW = (1.0, 200.0)  # Zipf-Mandelbrot exponent and offset: weight ~ (rank + offset) ** -exponent
ITEM_LAW = (1.05, 20.0)
SESSION_ROWS = 6  # expected interactions per session
SESSION_GAP = 20 * 60.0  # mean seconds between interactions inside a session (exponential)
MIN_COUNT = 10  # the k-core threshold: the library's default


# ----------------------------------------------------------------------------- the synthetic log


def zipf_weights(size: int, law: tuple[float, float]) -> np.ndarray:
    """Probabilities (size,) of ranks 0..size-1 under a Zipf-Mandelbrot law."""
    exponent, offset = law
    weights = (np.arange(size, dtype=np.float64) + offset) ** -exponent
    return weights / weights.sum()


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Write a heavy-tailed, dated CSV log of ``rows`` interactions (see the module docstring)."""
    rng = np.random.default_rng(seed)
    num_users, num_items = max(1, int(rows * USERS_PER_ROW)), max(1, int(rows * ITEMS_PER_ROW))
    user_p, item_p = zipf_weights(num_users, USER_LAW), zipf_weights(num_items, ITEM_LAW)
    user_cdf, item_cdf = np.cumsum(user_p), np.cumsum(item_p)
    user_ids = rng.permutation(num_users) + 1  # rank -> id: popularity does not follow the id
    item_ids = rng.permutation(num_items) + 1
    # Each user: when they start, how long they stay active, how many sessions they have.
    span = np.minimum(rng.lognormal(np.log(365 * 86_400.0), 1.0, num_users), END - START)
    first = START + rng.random(num_users) * (END - START - span)
    sessions = 1 + (user_p * rows / SESSION_ROWS).astype(np.int64)
    tmp = path.with_suffix(".part")
    with open(tmp, "wb") as out:
        out.write(b"user_id,item_id,timestamp\n")
        for start in range(0, rows, CHUNK):
            m = min(CHUNK, rows - start)
            user = np.minimum(np.searchsorted(user_cdf, rng.random(m)), num_users - 1)
            item = np.minimum(np.searchsorted(item_cdf, rng.random(m)), num_items - 1)
            session = (rng.random(m) * sessions[user]).astype(np.int64)
            # session start: a fixed, well-spread fraction of the user's span (golden-ratio steps)
            place = np.modf((session + 1) * 0.6180339887 + user * 0.7548776662)[0]
            when = first[user] + span[user] * place + rng.exponential(SESSION_GAP, m)
            pl.DataFrame({"user_id": user_ids[user], "item_id": item_ids[item],
                          "timestamp": np.minimum(when, END - 1).astype(np.int64)}
                         ).write_csv(out, include_header=False)
    os.replace(tmp, path)


def log_file(directory: Path, rows: int, seed: int) -> tuple[Path, float]:
    """The log of ``rows`` rows in ``directory``, generated unless a previous run left it there.
    Returns (path, seconds spent generating)."""
    path = directory / f"log-{rows}-seed{seed}.csv"
    if path.exists():
        return path, 0.0
    start = time.perf_counter()
    generate(path, rows, seed)
    return path, time.perf_counter() - start


# ----------------------------------------------------------------------------- measuring


CHILD = r"""
import hashlib, json, sys, time
import numpy as np

def peak_kib():  # this process's own high-water mark (ru_maxrss would include the parent's at fork)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

start = time.perf_counter()
from t2arec.data.prepare import prepare
from t2arec.data.readers import read_interactions
import polars as pl
imported = time.perf_counter()
rss_imported = peak_kib()
interactions = read_interactions(sys.argv[1])
read = time.perf_counter()
data = prepare(interactions, "scale", min_count=int(sys.argv[2]))
prepared = time.perf_counter()
digest = hashlib.sha256(np.array([len(a) for a in data.items], dtype=np.int64).tobytes())
for part in (data.items, data.times):
    for array in part:
        digest.update(np.ascontiguousarray(array).tobytes())
digest.update(repr(data.item_ids).encode() + repr(data.user_ids).encode())
print(json.dumps({"read_seconds": read - imported, "prepare_seconds": prepared - read,
                  "import_seconds": imported - start, "import_peak_rss_mib": rss_imported / 1024,
                  "polars": pl.__version__, "polars_threads": pl.thread_pool_size(),
                  "sha256": digest.hexdigest(), "peak_rss_kib": peak_kib(), **data.report.to_dict()}))
"""


def run_child(path: Path, src: Path | None, min_count: int) -> dict[str, Any]:
    """Prepare ``path`` in a fresh process (with ``src`` first on PYTHONPATH if given) and return
    its timings, counts and peak resident memory.

    The peak is the child's own ``VmHWM`` (Linux): ``RUSAGE_CHILDREN`` would give the largest of
    all children so far, and even ``wait4``'s ``ru_maxrss`` counts this process's size at the fork.
    """
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", CHILD, str(path), str(min_count)], env=env,
                           capture_output=True, text=True)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise RuntimeError(f"preparing {path} failed:\n{child.stderr}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["peak_rss_mib"] = result.pop("peak_rss_kib") / 1024
    result["wall_seconds"] = wall
    return result


# ----------------------------------------------------------------------------- report


def plot(report: dict[str, Any], target: Path) -> None:
    """Time and peak memory against size, log-log, streaming and baseline runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    for name, style in (("streaming", "o-"), ("baseline", "s--")):
        runs = [r for r in report["runs"] if r["implementation"] == name]
        if not runs:
            continue
        sizes = [r["size"] for r in runs]
        label = "this reader (streaming)" if name == "streaming" else "previous reader (eager)"
        ax_time.plot(sizes, [r["read_seconds"] + r["prepare_seconds"] for r in runs], style, label=label)
        ax_mem.plot(sizes, [r["peak_rss_mib"] / 1024 for r in runs], style, label=label)
    streaming = [r for r in report["runs"] if r["implementation"] == "streaming"]
    if streaming:  # what the prepared arrays alone take: items int64 + times float64
        sizes = [r["size"] for r in streaming]
        ax_mem.plot(sizes, [16 * r["interactions"] / 2**30 for r in streaming], ":", color="grey",
                    label="prepared arrays (16 B per kept interaction)")
    for ax, title, unit in ((ax_time, "preparation time (read + prepare)", "seconds"),
                            (ax_mem, "peak resident memory", "GiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("interactions in the log")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=120)


def machine() -> dict[str, Any]:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpus": os.cpu_count(), "memory_gib": round(memory, 1), "python": platform.python_version(),
            "numpy": np.__version__, "polars": pl.__version__,
            "POLARS_MAX_THREADS": os.environ.get("POLARS_MAX_THREADS"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e6, 1e7, 1e8],
                        help="interactions per log (1e6 1e7 1e8)")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="the src/ of another copy of t2arec to measure too (before/after)")
    parser.add_argument("--baseline-sizes", nargs="+", type=float, default=[1e6, 1e7])
    parser.add_argument("--min-count", type=int, default=MIN_COUNT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where logs are written (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated logs")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--plot", type=Path, default=None, help="draw time and memory against size here")
    parser.add_argument("--from-json", type=Path, default=None, help="only re-plot a previous --out")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        report = json.loads(args.from_json.read_text())
        if args.plot is not None:
            plot(report, args.plot)
        return report

    this_src = Path(__file__).resolve().parents[1] / "src"
    directory = args.dir or Path(tempfile.mkdtemp(prefix="t2arec-scale-"))
    directory.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                              "machine": machine(), "min_count": args.min_count, "seed": args.seed,
                              "runs": []}
    try:
        for size in sorted({int(s) for s in args.sizes} | {int(s) for s in args.baseline_sizes if args.baseline_src}):
            path, generating = log_file(directory, size, args.seed)
            plans = [("streaming", this_src)] if size in {int(s) for s in args.sizes} else []
            if args.baseline_src is not None and size in {int(s) for s in args.baseline_sizes}:
                plans.append(("baseline", args.baseline_src))
            for name, src in plans:
                result = run_child(path, src, args.min_count)
                run = {"implementation": name, "size": size, "file_mib": path.stat().st_size / 2**20,
                       "generate_seconds": generating, **result}
                report["runs"].append(run)
                print(json.dumps(run), file=sys.stderr, flush=True)  # progress: one line per run
            if not args.keep:
                path.unlink()
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    if args.plot is not None:
        plot(report, args.plot)
    return report


if __name__ == "__main__":
    main()
