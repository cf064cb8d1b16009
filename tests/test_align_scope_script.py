"""benchmarks/align_scope.py on a tiny trained run: both scopes, their grid, and the identity that
a batch of one user is a request of one user."""
import json
import sys

import pytest

from t2arec.config import RunConfig, apply_overrides
from t2arec.pipeline import run
from tests.benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = RunConfig()
    apply_overrides(cfg, ["data.synthetic_users=60", "data.synthetic_items=40", "data.max_len=12", "train.epochs=1",
                          "align.lr_grid=2.0"])
    out = tmp_path_factory.mktemp("tiny-scope-run")
    run(cfg, out, progress=False)
    return out


def test_a_batch_of_one_user_is_a_request_of_one_user(tiny_run):
    script = load_benchmark("align_scope")
    result = script.compare_checkpoint(tiny_run, grid=False, batch_size=1)
    for split in ("valid", "test"):
        stored = result["stored"][split]
        assert stored["request"]["ndcg@10"] == pytest.approx(stored["batch"]["ndcg@10"], abs=1e-12)
        assert stored["request_vs_batch"]["users_helped"] == stored["request_vs_batch"]["users_hurt"] == 0
        assert stored["request"]["param_shift_mean"] == pytest.approx(stored["batch"]["param_shift_mean"], rel=1e-4)


def test_the_script_compares_both_scopes_and_their_grids(tiny_run, tmp_path, monkeypatch, capsys):
    script = load_benchmark("align_scope")
    out = tmp_path / "scope.json"
    monkeypatch.setattr(sys, "argv", ["align_scope.py", "--checkpoints", str(tiny_run), "--out", str(out)])
    assert script.main() == 0
    report = json.loads(out.read_text())
    (result,) = report["results"]
    assert result["stored_lr"] == 2.0 and result["batch_size"] == 4096
    assert script.compare_checkpoint(tiny_run, grid=False, lr=0.5)["stored_lr"] == 0.5
    stored = result["stored"]["test"]
    assert stored["batch"]["param_shift_mean"] > 0 and stored["request"]["param_shift_mean"] > 0
    assert stored["request"]["ms_per_user"] > 0
    # the whole split is one batch step here, and 60 request steps: the scopes differ
    assert stored["request"]["param_shift_mean"] != pytest.approx(stored["batch"]["param_shift_mean"], rel=1e-3)
    for scope in ("batch", "request"):
        grid = result["grid"][scope]
        assert [row["lr"] for row in grid["valid_rows"]] == [None, 2.0]  # no step, then the grid (here one step)
        assert grid["chosen"]["tested_on"] == "validation"
    text = capsys.readouterr().out
    assert "| synthetic-shift1 seed 2026 | test | 2 |" in text and "| synthetic-shift1 seed 2026 | request |" in text
