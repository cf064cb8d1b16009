"""One short end-to-end run of the CLI on a small synthetic dataset, then re-evaluation and errors."""
import dataclasses
import gzip
import hashlib
import io
import json
import zipfile

import pytest
from typer.testing import CliRunner

from t2arec.cli import app
from t2arec.models import MODEL_NAMES
from tests.fileserver import FileServer, closed_port_url

runner = CliRunner()
SMALL = ["data.synthetic_users=150", "data.synthetic_items=60", "data.max_len=20", "--epochs", "2", "--quiet"]


def test_run_writes_results_and_checkpoint_then_evaluate_reproduces_them(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--out", str(out), "--seed", "3", *SMALL])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    for key in ("model", "dataset", "config", "seed", "best_epoch", "train_seconds", "valid", "test", "test_no_tta", "segments"):
        assert key in results
    assert results["model"] == "t2arec" and results["seed"] == 3
    assert set(results["dataset"]) >= {"name", "users", "items", "interactions"}
    assert results["dataset"]["users"] == 150
    assert len(results["segments"]) == 4
    assert sum(s["users"] for s in results["segments"]) == 150
    for block in [results["test"], results["test_no_tta"], *(s["test"] for s in results["segments"])]:
        assert set(block) >= {"recall@10", "mrr@10", "ndcg@10"}
        assert 0.0 <= block["ndcg@10"] <= block["recall@10"] <= 1.0
    # on this small run no step's validation gain is significant: test runs without a step
    alignment = results["alignment"]
    assert not alignment["applied"] and alignment["lr"] is None and results["test"] == results["test_no_tta"]
    assert alignment["chosen"]["lr"] is None and alignment["chosen"]["tested_on"] == "validation"
    assert alignment["chosen"]["p_adjusted"] >= 0.05 and "no step" in alignment["chosen"]["reason"]
    assert results["config"]["align"]["lr"] == alignment["chosen"]["best_grid_lr"]
    assert (out / "checkpoint").is_file()
    assert "ndcg@10" in result.output

    again = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(out / "checkpoint"), "--out", str(again), "--quiet"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((again / "results.json").read_text())
    assert evaluated["test"] == results["test"]  # the checkpoint follows the choice: no step
    assert evaluated["test_no_tta"] == results["test_no_tta"]
    assert not evaluated["alignment"]["applied"]

    # --align forces the best grid step stored in the checkpoint
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(out / "checkpoint"), "--out", str(again), "--align",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    forced = json.loads((again / "results.json").read_text())
    assert forced["alignment"]["applied"] and forced["alignment"]["param_shift_mean"] > 0
    assert forced["alignment"]["lr"] == alignment["chosen"]["best_grid_lr"]
    assert forced["test_no_tta"] == results["test_no_tta"]

    result = runner.invoke(app, ["evaluate", "--checkpoint", str(out / "checkpoint"), "--out", str(again), "--no-align", "--quiet"])
    assert json.loads((again / "results.json").read_text())["test"] == results["test_no_tta"]


def test_a_step_given_without_a_grid_is_used_untested_and_evaluate_reproduces_it(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--out", str(out), "--seed", "3", "align.lr_grid=", "align.lr=1.0", *SMALL])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["alignment"]["applied"] and results["alignment"]["lr"] == 1.0
    assert results["alignment"]["param_shift_mean"] > 0 and results["alignment_selection"] == []
    assert results["alignment"]["chosen"]["tested_on"] is None and "untested" in results["alignment"]["chosen"]["reason"]
    again = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(out / "checkpoint"), "--out", str(again), "--quiet"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((again / "results.json").read_text())
    assert evaluated["test"] == results["test"] and evaluated["alignment"]["applied"]


def test_align_scope_flag_of_run_and_evaluate(tmp_path):
    """--align-scope request: every test user its own step, stored in the checkpoint; evaluate follows
    it, --align-scope switches it, and a bad scope is a one-line error."""
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--out", str(out), "--seed", "3", "--align-scope", "request", "align.lr_grid=",
                                 "align.lr=1.0", *SMALL])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["alignment"]["scope"] == "request" and results["config"]["align"]["scope"] == "request"
    assert results["alignment"]["applied"] and results["test"] != results["test_no_tta"]
    runs = {}
    for flags in ((), ("--align-scope", "request"), ("--align-scope", "batch")):
        again = tmp_path / f"eval{len(runs)}"
        result = runner.invoke(app, ["evaluate", "--checkpoint", str(out / "checkpoint"), "--out", str(again),
                                     *flags, "--quiet"])
        assert result.exit_code == 0, result.output
        runs[flags] = json.loads((again / "results.json").read_text())
    assert runs[()]["test"] == runs[("--align-scope", "request")]["test"] == results["test"]
    assert runs[("--align-scope", "batch")]["alignment"]["scope"] == "batch"
    assert runs[("--align-scope", "batch")]["test"] != results["test"]  # one step for all 150 users
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(out / "checkpoint"), "--out", str(tmp_path / "bad"),
                                 "--align-scope", "user", "--quiet"])
    assert result.exit_code == 2 and "align.scope must be 'batch' or 'request'" in result.output
    result = runner.invoke(app, ["run", "--out", str(tmp_path / "bad"), "--align-scope", "user", *SMALL])
    assert result.exit_code == 2 and "align.scope" in result.output


def test_same_seed_same_metrics(tmp_path):
    metrics = []
    for name in ("a", "b"):
        result = runner.invoke(app, ["run", "--out", str(tmp_path / name), "--seed", "5", *SMALL])
        assert result.exit_code == 0, result.output
        metrics.append(json.loads((tmp_path / name / "results.json").read_text())["test"])
    assert metrics[0] == metrics[1]


def test_no_align_repeats_unaligned_metrics(tmp_path):
    result = runner.invoke(app, ["run", "--out", str(tmp_path), "--no-align", *SMALL])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test"] == results["test_no_tta"]
    assert not results["alignment"]["applied"]


def test_malformed_file_gives_one_line_error(tmp_path):
    bad = tmp_path / "bad.inter"
    bad.write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\tnot-a-time\n")
    result = runner.invoke(app, ["run", "--data", str(bad), "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 2
    lines = [l for l in result.output.strip().splitlines() if l]
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.inter" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "o" / "results.json").exists()


def test_unknown_override_key_is_an_error(tmp_path):
    result = runner.invoke(app, ["run", "--out", str(tmp_path), "model.hiden_size=3", "--quiet"])
    assert result.exit_code == 2
    assert "hiden_size" in result.output


def small_log():
    """A small synthetic log as a polars frame (user, item, time in seconds)."""
    from t2arec.data.synthetic import make_synthetic

    frame = make_synthetic(num_users=120, num_items=50, seed=4).frame
    return frame


def test_csv_with_column_mapping_and_milliseconds_runs_end_to_end(tmp_path):
    frame = small_log()
    path = tmp_path / "log.csv"
    frame.select(uid=frame["user"], movie=frame["item"], rating=1, ts=(frame["time"] * 1000).cast(int)).write_csv(path)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--data", str(path), "--columns", "user=uid,item=movie,time=ts",
                                 "--epochs", "1", "--max-len", "20", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    dataset = json.loads((out / "results.json").read_text())["dataset"]
    assert dataset["time_unit"] == "milliseconds"
    assert dataset["users"] == 120 and dataset["interactions"] == frame.height


def test_recbole_atomic_file_with_extra_columns_runs_end_to_end(tmp_path):
    frame = small_log()
    path = tmp_path / "log.inter"
    lines = ["session_id:token\tuser_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"s\t{u}\t{i}\t{t:.0f}" for u, i, t in frame.iter_rows()]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--data", str(path), "--epochs", "1", "--max-len", "20", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    dataset = json.loads((out / "results.json").read_text())["dataset"]
    assert dataset["time_unit"] == "seconds" and dataset["users"] == 120


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_registered_model_runs_through_the_cli(tmp_path, name):
    result = runner.invoke(app, ["run", "--model", name, "--out", str(tmp_path), "data.synthetic_users=100",
                                 "data.synthetic_items=40", "--max-len", "12", "--epochs", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["model"] == name and 0.0 <= results["test"]["ndcg@10"] <= 1.0
    # only a model with a self-supervised loss can be aligned, and only with a step chosen on validation;
    # the others report their plain metrics twice
    chosen = results["alignment"]["chosen"]
    assert chosen["tested_on"] == ("validation" if name == "t2arec" else None)
    assert results["alignment"]["applied"] == (name == "t2arec" and chosen["lr"] is not None)
    if not results["alignment"]["applied"]:
        assert results["test"] == results["test_no_tta"]


@pytest.mark.parametrize("command", ["evaluate", "recommend", "serve"])
@pytest.mark.parametrize("content", [b'{"not": "a checkpoint"}', b"", b"\x80\x02K\x01."])  # JSON, empty, a pickled int
def test_a_file_that_is_not_a_checkpoint_gives_one_line_error(tmp_path, command, content):
    bogus = tmp_path / "model.ckpt"
    bogus.write_bytes(content)
    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"items": [1], "timestamps": [1], "now": 2}\n')
    extra = {"evaluate": ["--out", str(tmp_path / "ev")], "recommend": ["--input", str(requests)],
             "serve": ["--port", "0"]}[command]
    result = CliRunner().invoke(app, [command, "--checkpoint", str(bogus), *extra])
    assert result.exit_code == 2
    assert f"{bogus}: not a t2arec checkpoint" in result.output
    assert "Traceback" not in result.output


def test_the_entry_point_sets_the_process_up_before_any_command(monkeypatch):
    """`t2arec` (cli.main) keeps freed memory and flushes subnormals before the command runs."""
    import t2arec.cli as cli
    import t2arec.runtime as runtime

    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append("memory") or True)
    monkeypatch.setattr(runtime, "flush_denormals", lambda: calls.append("flush") or True)
    monkeypatch.setattr(cli, "app", lambda: calls.append("command"))
    cli.main()
    assert calls == ["memory", "flush", "command"]


# ----------------------------------------------------------------------------- datasets by name and archives


def one_error_line(result) -> str:
    """The single ``error:`` line a failed command prints, checked for exit code 2 and no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def ml1m_zip_bytes(tmp_path) -> bytes:
    """A small log packed like GroupLens' ml-1m.zip (ml-1m/ratings.dat with '::', plus other files)."""
    frame = small_log()
    ratings = "".join(f"{u}::{i}::4::{int(t)}\n" for u, i, t in frame.iter_rows())
    path = tmp_path / "packed.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ml-1m/README", "MovieLens 1M\n")
        archive.writestr("ml-1m/users.dat", "1::F::1::10::48067\n")
        archive.writestr("ml-1m/ratings.dat", ratings)
    return path.read_bytes()


def test_datasets_lists_the_known_datasets_with_size_check_licence_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("T2AREC_HOME", str(tmp_path))
    result = runner.invoke(app, ["datasets"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    names = [line.split()[0] for line in lines[1:-1]]
    for name in ["ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest-small", "amazon2018-prime-pantry"]:
        assert name in names
    assert "md5 (publisher)" in result.output and "size (as served)" in result.output
    assert lines[-1].startswith(f"cache: {tmp_path / 'datasets'}")
    listed = json.loads(runner.invoke(app, ["datasets", "--json"]).output)
    assert listed["cache"] == str(tmp_path / "datasets")
    ml1m = next(d for d in listed["datasets"] if d["name"] == "ml-1m")
    assert ml1m["checksum"] == {"kind": "md5", "value": "c4d9eecfca2ab87c1945afe126590906"} and not ml1m["cached"]


def test_a_dataset_name_offline_fails_in_one_line_naming_the_url_and_the_fix(tmp_path, monkeypatch):
    base = closed_port_url()
    monkeypatch.setenv("T2AREC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("T2AREC_DATASETS_URL", base)
    result = runner.invoke(app, ["run", "--data", "ml-1m", "--epochs", "1", "--out", str(tmp_path / "o"), "--quiet"])
    line = one_error_line(result)
    assert f"cannot download {base}/ml-1m.zip" in line and "--data /path/to/ml-1m.zip" in line
    assert not (tmp_path / "o" / "results.json").exists()


def test_a_download_that_fails_its_checksum_is_one_line_and_not_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("T2AREC_HOME", str(tmp_path / "home"))
    with FileServer({"ml-1m.zip": b"this is not the GroupLens archive"}) as server:
        monkeypatch.setenv("T2AREC_DATASETS_URL", server.url)
        result = runner.invoke(app, ["run", "--data", "ml-1m", "--out", str(tmp_path / "o"), "--quiet"])
    line = one_error_line(result)
    assert f"md5 mismatch for {server.url}/ml-1m.zip" in line and "expected c4d9eecfca2ab87c1945afe126590906" in line
    assert list((tmp_path / "home" / "datasets").iterdir()) == []


def test_an_unknown_dataset_name_suggests_close_ones(tmp_path):
    line = one_error_line(runner.invoke(app, ["compare", "--data", "ml-1mm", "--out", str(tmp_path), "--quiet"]))
    assert "ml-1mm: no such file and not a known dataset name (did you mean 'ml-1m'" in line


def test_a_dataset_by_name_is_downloaded_once_and_evaluate_finds_it_in_the_cache(tmp_path, monkeypatch):
    from t2arec.data import datasets

    packed = ml1m_zip_bytes(tmp_path)
    # the real entry with this fixture's checksum: everything else (URL name, member, format) as registered
    monkeypatch.setitem(datasets.REGISTRY, "ml-1m", dataclasses.replace(
        datasets.REGISTRY["ml-1m"], checksum=("md5", hashlib.md5(packed).hexdigest())))
    monkeypatch.setenv("T2AREC_HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    with FileServer({"ml-1m.zip": packed}) as server:
        monkeypatch.setenv("T2AREC_DATASETS_URL", server.url)
        result = runner.invoke(app, ["run", "--data", "ml-1m", "--epochs", "1", "--max-len", "20", "--out", str(out), "--quiet"])
        assert result.exit_code == 0, result.output
        assert [r["path"] for r in server.requests] == ["ml-1m.zip"]
    cached = tmp_path / "home" / "datasets" / "ml-1m.zip"
    assert cached.read_bytes() == packed
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["data"]["path"] == "ml-1m"
    assert results["dataset"]["name"] == "ml-1m" and results["dataset"]["source"] == f"{cached}:ml-1m/ratings.dat"
    assert results["dataset"]["users"] == 120

    # the server is gone: evaluate reads the checkpoint's "ml-1m" from the cache
    result = runner.invoke(app, ["evaluate", "--checkpoint", str(out / "checkpoint"), "--out", str(tmp_path / "ev"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["test_no_tta"] == results["test_no_tta"]


@pytest.mark.parametrize("kind", ["zip", "gz"])
def test_local_archives_are_read_directly(tmp_path, kind):
    packed = ml1m_zip_bytes(tmp_path)
    if kind == "zip":
        path = tmp_path / "ml-1m.zip"
        path.write_bytes(packed)
        name, source = "ml-1m", f"{path}:ml-1m/ratings.dat"
    else:
        path = tmp_path / "ratings.dat.gz"
        with zipfile.ZipFile(io.BytesIO(packed)) as archive:
            path.write_bytes(gzip.compress(archive.read("ml-1m/ratings.dat")))
        name, source = "ratings", str(path)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "--data", str(path), "--epochs", "1", "--max-len", "20", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    dataset = json.loads((out / "results.json").read_text())["dataset"]
    assert dataset["name"] == name and dataset["source"] == source and dataset["users"] == 120
    assert {p.name for p in tmp_path.iterdir()} == {path.name, "packed.zip", "out"}  # nothing was unpacked
