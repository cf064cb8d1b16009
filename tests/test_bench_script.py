"""benchmarks/bench.py end to end on tiny data: every figure is there and makes sense."""
import json
import sys

from t2arec.data.prepare import prepare
from t2arec.data.synthetic import make_synthetic
from t2arec.models import MODEL_NAMES

from tests.benchmark_scripts import load_benchmark



def test_the_benchmark_prints_every_figure(tmp_path, monkeypatch, capsys):
    bench = load_benchmark("bench")
    tiny = prepare(make_synthetic(num_users=40, num_items=30, mean_length=12, seed=0), name="tiny")
    monkeypatch.setattr(bench, "ml1m_like", lambda: tiny)
    monkeypatch.setattr(bench, "ml100k", lambda path: tiny)
    monkeypatch.setattr(bench, "ml1m", lambda path: tiny)
    monkeypatch.setattr(bench, "matmul_gflops", lambda: 10.0)  # a 2048 x 2048 product is slow enough to skip
    monkeypatch.setattr(bench, "stream_gb_s", lambda: 5.0)
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--repeats", "1", "--batch-size", "16", "--out", str(out)])
    bench.main()
    figures = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == figures
    for key in ("tta_it_s", "no_tta_it_s", "sasrec_it_s", "mamba4rec_it_s", "epoch_s_ml100k", "epoch_s_ml1m_like",
                "train_peak_rss_mb", "flops_per_test_iteration", "matmul_gflops", "tta_request_it_s"):
        assert figures[key] > 0, key
    assert all(figures["served_ms"][scope]["p99"] >= figures["served_ms"][scope]["p50"] > 0
               for scope in ("request", "batch"))
    assert set(figures["epoch_s_ml1m"]) == set(MODEL_NAMES)  # every model's pass over the training targets
    assert all(seconds > 0 for seconds in figures["epoch_s_ml1m"].values())
    # the step adds its products to the prediction's (h_n forward and backward, the per-sequence layers;
    # its convolution is an embedding_bag, which the counter does not count): more counted work
    assert figures["flops_per_test_iteration"] > 1.2 * figures["flops_per_test_iteration_no_tta"]


def test_only_the_scope_figures(tmp_path, monkeypatch, capsys):
    bench = load_benchmark("bench")
    tiny = prepare(make_synthetic(num_users=40, num_items=30, mean_length=12, seed=0), name="tiny")
    monkeypatch.setattr(bench, "ml1m_like", lambda: tiny)
    out = tmp_path / "scope.json"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--only-scope", "--repeats", "1", "--batch-size", "16",
                                      "--latency-users", "12", "--out", str(out)])
    bench.main()
    figures = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == figures
    assert figures["tta_it_s"] > 0 and figures["tta_request_it_s"] > 0
    assert figures["tta_request_over_tta"] == figures["tta_request_it_s"] / figures["tta_it_s"]
    assert {scope: figures["served_ms"][scope]["users"] for scope in ("request", "batch")} == {"request": 12, "batch": 12}
    assert "epoch_s_ml1m" not in figures and "sasrec_it_s" not in figures  # nothing else ran


def test_only_the_aligned_and_plain_iterations(tmp_path, monkeypatch, capsys):
    bench = load_benchmark("bench")
    tiny = prepare(make_synthetic(num_users=40, num_items=30, mean_length=12, seed=0), name="tiny")
    monkeypatch.setattr(bench, "ml1m_like", lambda: tiny)
    out = tmp_path / "tta.json"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--tta-only", "--repeats", "1", "--batch-size", "16", "--out", str(out)])
    bench.main()
    figures = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == figures
    assert figures["tta_it_s"] > 0 and figures["no_tta_it_s"] > 0
    assert figures["tta_over_no_tta"] == figures["tta_it_s"] / figures["no_tta_it_s"]
    assert "tta_request_it_s" not in figures and "sasrec_it_s" not in figures  # nothing else ran


def test_only_the_passes_over_the_training_targets(tmp_path, monkeypatch, capsys):
    bench = load_benchmark("bench")
    tiny = prepare(make_synthetic(num_users=40, num_items=30, mean_length=12, seed=0), name="tiny")
    monkeypatch.setattr(bench, "ml1m", lambda path: tiny)
    monkeypatch.setattr(bench, "ml1m_like", lambda: (_ for _ in ()).throw(AssertionError("not asked for")))
    out = tmp_path / "epochs.json"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--epoch-only", "--epoch-models", "t2arec", "sasrec",
                                      "--out", str(out)])
    bench.main()
    figures = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == figures
    assert set(figures["epoch_s_ml1m"]) == {"t2arec", "sasrec"}
    assert all(seconds > 0 for seconds in figures["epoch_s_ml1m"].values())
    assert "tta_it_s" not in figures and "epoch_s_ml100k" not in figures  # nothing else ran
