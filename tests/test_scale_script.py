"""benchmarks/scale.py: the synthetic log is heavy-tailed and dated, and a run reports what it measured."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import polars as pl

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "scale.py"


def load_script():
    spec = importlib.util.spec_from_file_location("scale_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_log_is_heavy_tailed_and_dated(tmp_path: Path) -> None:
    scale = load_script()
    path = tmp_path / "log.csv"
    scale.generate(path, 200_000, seed=1)
    frame = pl.read_csv(path)
    assert frame.columns == ["user_id", "item_id", "timestamp"] and frame.height == 200_000
    per_user = frame["user_id"].value_counts()["count"].to_numpy()
    per_item = frame["item_id"].value_counts()["count"].to_numpy()
    assert per_user.max() > 20 * np.median(per_user) and per_item.max() > 50 * np.median(per_item)
    assert frame["timestamp"].min() >= scale.START and frame["timestamp"].max() < scale.END
    # the busiest user is not user 1: ids are shuffled against popularity
    assert frame["user_id"].mode().item() != 1
    # sessions: a user's interactions bunch up (many gaps under an hour), spread over months
    gaps = (frame.sort("user_id", "timestamp").group_by("user_id", maintain_order=True)
            .agg(pl.col("timestamp").diff().drop_nulls()).explode("timestamp")["timestamp"].drop_nulls())
    assert (gaps < 3600).mean() > 0.3 and gaps.max() > 90 * 86_400
    again = tmp_path / "again.csv"
    scale.generate(again, 200_000, seed=1)
    assert again.read_bytes() == path.read_bytes()


def test_a_run_reports_time_memory_and_counts(tmp_path: Path) -> None:
    scale = load_script()
    out, picture = tmp_path / "scale.json", tmp_path / "scale.png"
    report = scale.main(["--sizes", "2e4", "--min-count", "3", "--dir", str(tmp_path / "logs"),
                         "--out", str(out), "--plot", str(picture)])
    assert json.loads(out.read_text()) == report
    (run,) = report["runs"]
    assert run["implementation"] == "streaming" and run["size"] == 20_000 and run["rows_read"] == 20_000
    assert run["read_seconds"] > 0 and run["prepare_seconds"] > 0
    assert 50 < run["peak_rss_mib"] < 4096 and run["peak_rss_mib"] >= run["import_peak_rss_mib"]
    assert run["interactions"] + run["dropped"]["k_core_filter"] == 20_000 and len(run["sha256"]) == 64
    assert not list((tmp_path / "logs").iterdir())  # not kept without --keep
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_data_digest_changes_with_the_prepared_data(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("data_digest", SCRIPT.with_name("data_digest.py"))
    digest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(digest)
    path = tmp_path / "log.csv"
    rows = [f"u{k % 4},i{k % 5},{k}" for k in range(40)]
    path.write_text("user,item,time\n" + "\n".join(rows) + "\n")
    first = digest.main([str(path), "min_count=3"])
    assert digest.main([str(path), "min_count=3"])["sha256"] == first["sha256"]
    assert (first["users"], first["items"], first["interactions"]) == (4, 5, 40)
    rows[0], rows[1] = "u0,i0,1", "u1,i1,0"  # two times swapped: other order, same counts
    path.write_text("user,item,time\n" + "\n".join(rows) + "\n")
    assert digest.main([str(path), "min_count=3"])["sha256"] != first["sha256"]
