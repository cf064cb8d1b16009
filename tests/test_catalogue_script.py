"""benchmarks/catalogue.py on a small catalogue: every figure is there and makes sense."""
import argparse
import json
import subprocess

import pytest
import torch

from tests.benchmark_scripts import load_benchmark


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL = argparse.Namespace(items=3000, examples=24, batch_size=16, max_len=8, requests=3, warmup=1)


def test_the_parts_report_time_memory_and_latency(one_thread):
    catalogue = load_benchmark("catalogue")
    plain = catalogue.evaluate_part(SMALL, aligned=False)
    aligned = catalogue.evaluate_part(SMALL, aligned=True)
    assert plain["aligned_batches"] == 0 and aligned["aligned_batches"] == 2  # 24 examples at batch 16
    for part in (plain, aligned):
        # VmRSS and ru_maxrss come from different kernel counters (per-CPU RSS counts are folded in
        # lazily, tens of KiB late): when this process is at its lifetime peak (after large tests in
        # the same session) "before" can read a few KiB above the peak. 1 MiB of slack
        assert part["seconds"] > 0 and 0 < part["rss_before_gib"] <= part["peak_rss_gib"] + 2**-10
    serve = catalogue.serve_part(SMALL)
    for mode in ("plain", "aligned"):
        assert serve[mode]["requests"] == 3 and 0 < serve[mode]["p50_ms"] <= serve[mode]["p99_ms"]
    assert serve["peak_rss_gib"] > 0


def test_the_parent_runs_each_part_in_its_own_process(monkeypatch, tmp_path, capsys):
    catalogue = load_benchmark("catalogue")
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        part = command[command.index("--part") + 1]
        return subprocess.CompletedProcess(command, 0, stdout=json.dumps({"part": part}) + "\n")

    monkeypatch.setattr(catalogue.subprocess, "run", fake_run)
    out = tmp_path / "catalogue.json"
    monkeypatch.setattr("sys.argv", ["catalogue.py", "--items", "1000000", "--out", str(out)])
    catalogue.main()
    figures = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == figures
    assert [figures[part]["part"] for part in catalogue.PARTS] == list(catalogue.PARTS)
    assert all("--items" in c and c[c.index("--items") + 1] == "1000000" for c in calls)
    assert figures["items_per_block"] == 2**26 // 4096 and figures["block_gib"] == 0.25
    assert figures["full_score_matrix_gib"] == pytest.approx(4096 * 10**6 * 4 / 2**30)
