"""benchmarks/load_test.py, briefly: it starts `t2arec serve` as a real process, loads it from
several clients, checks the parameters and a probe afterwards, reports and stops the server."""
import json
import os
import subprocess
import sys
from pathlib import Path

import t2arec.serve

ROOT = Path(__file__).resolve().parents[2]


def test_short_load_test_against_the_real_server(tmp_path, checkpoint):
    src = str(Path(t2arec.serve.__file__).resolve().parents[2])  # the t2arec under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    out = tmp_path / "load.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "load_test.py"), "--checkpoint", str(checkpoint),
                             "--clients", "3", "--duration", "1.5", "--max-requests", "60", "--users-per-request", "2",
                             "--probe-every", "3", "--out", str(out)], capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["errors"] == 0 and report["failures"] == []
    assert 0 < report["requests"] <= 60 and report["status_codes"] == {"200": report["requests"]}
    assert report["parameters_equal_checkpoint"] and report["probe_unchanged"]
    # request scope (the default): the probes sent amid the other clients got their answers alone
    probes = report["probes_under_load"]
    assert report["align_scope"] == "request" and report["aligns"]
    assert probes["sent"] > 0 and probes["same_top_k"] == probes["within_tolerance"] == probes["sent"]
    assert report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert report["rss_mb_before"]["VmRSS"] > 0 and report["rss_mb_after"]["VmRSS"] > 0
