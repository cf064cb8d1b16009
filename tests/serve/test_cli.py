"""`t2arec recommend` on JSON-lines files and the wiring of `t2arec serve`."""
import json

from typer.testing import CliRunner

from t2arec.cli import app
from tests.serve.helpers import split_histories

runner = CliRunner()


def write_requests(path, recommender, data, users):
    histories, now = split_histories(recommender, data, users)
    lines = [json.dumps({"id": f"u{u}", "items": h.items, "timestamps": h.timestamps, "now": t})
             for u, h, t in zip(users, histories, now)]
    path.write_text("\n".join(lines) + "\n")
    return histories, now


def test_recommend_file_gives_every_line_its_own_step_whatever_the_batch(tmp_path, checkpoint, recommender, data):
    """The default scope is request: each line one request, so its output does not depend on the
    other lines nor on --batch-size."""
    users = list(range(10))
    histories, now = write_requests(tmp_path / "in.jsonl", recommender, data, users)
    assert recommender.scope == "request" and recommender.aligns
    outputs = []
    for size in ("4", "1", "10"):
        out = tmp_path / f"out{size}.jsonl"
        result = runner.invoke(app, ["recommend", "--checkpoint", str(checkpoint), "--input",
                                     str(tmp_path / "in.jsonl"), "--output", str(out), "--k", "5", "--batch-size", size])
        assert result.exit_code == 0, result.output
        outputs.append([json.loads(line) for line in out.read_text().splitlines()])
    alone = [recommender.recommend(histories[u:u + 1], now[u:u + 1], k=5)[0] for u in users]
    assert outputs[0] == outputs[1] == outputs[2] == [{"id": f"u{u}", **r.to_dict()} for u, r in zip(users, alone)]


def test_recommend_file_in_batch_scope_equals_the_recommender_per_batch(tmp_path, checkpoint, recommender, data):
    from t2arec.serve import Recommender

    users = list(range(10))
    histories, now = write_requests(tmp_path / "in.jsonl", recommender, data, users)
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["recommend", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in.jsonl"),
                                 "--output", str(out), "--k", "5", "--batch-size", "4", "--align-scope", "batch"])
    assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in out.read_text().splitlines()]
    batch_scope = Recommender.load(checkpoint, scope="batch")
    expected = []
    for start in range(0, 10, 4):  # one alignment step per batch of 4 lines
        expected += batch_scope.recommend(histories[start:start + 4], now[start:start + 4], k=5)
    assert got == [{"id": f"u{u}", **r.to_dict()} for u, r in zip(users, expected)]
    by_line = recommender.recommend(histories, now, k=5, requests=users)
    assert got != [{"id": f"u{u}", **r.to_dict()} for u, r in zip(users, by_line)]  # the scopes differ here

    result = runner.invoke(app, ["recommend", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in.jsonl"),
                                 "--k", "3", "--no-align", "--exclude-seen"])
    assert result.exit_code == 0, result.output
    plain = recommender.recommend(histories, now, k=3, align=False, exclude_seen=True)
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"id": f"u{u}", **r.to_dict()} for u, r in zip(users, plain)]


def test_a_bad_line_stops_with_its_number_and_field_and_writes_nothing(tmp_path, checkpoint):
    ok = '{"items": [1, 2], "timestamps": [10, 20], "now": 30}'
    cases = [
        ('{"items": [1, 2], "timestamps": [20, 10], "now": 30}', "line 3: timestamps[1]: 10 is before"),
        ('{"items": [1, 2], "timestamps": [10, 20], "now": 15}', "line 3: now: 15 is before the last interaction"),
        ('{"items": [], "timestamps": [], "now": 15}', "line 3: items: the history is empty"),
        ('{"items": [1], "timestamps": [10], "now": NaN}', "line 3: now: must be a finite number"),
        ('{"items": [1], "timestamps": [10]}', "line 3: now: field required"),
        ('{"items": [1], "timestamps": [10], "now": 20, "k": 3}', "line 3: k: unknown field"),
        ('[1, 2]', "line 3: expected a JSON object"),
        ('{"items": [1', "line 3: invalid JSON"),
        ('{"items": [1, "nope"], "timestamps": [1, 2], "now": 3}', "line 3: items[1]: unknown item id 'nope'"),
    ]
    for bad, message in cases:
        source = tmp_path / "in.jsonl"
        source.write_text(f"{ok}\n\n{bad}\n{ok}\n")
        out = tmp_path / "out.jsonl"
        result = runner.invoke(app, ["recommend", "--checkpoint", str(checkpoint), "--input", str(source),
                                     "--output", str(out), "--strict"])
        assert result.exit_code == 2, (bad, result.output)
        assert result.output.startswith("error: ") and message in result.output, result.output
        assert "Traceback" not in result.output and not out.exists()
    source.write_text('{"items": [1, "nope"], "timestamps": [1, 2], "now": 3}\n')
    result = runner.invoke(app, ["recommend", "--checkpoint", str(checkpoint), "--input", str(source)])
    assert result.exit_code == 0 and json.loads(result.stdout)["skipped"] == 1
    result = runner.invoke(app, ["recommend", "--checkpoint", str(tmp_path / "missing"), "--input", str(source)])
    assert result.exit_code == 2 and "checkpoint not found" in result.output


def test_serve_builds_the_app_from_its_options(monkeypatch, checkpoint):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: seen.update(app=application, **kw))
    result = runner.invoke(app, ["serve", "--checkpoint", str(checkpoint), "--port", "8123", "--max-batch-users", "7",
                                 "--max-wait-ms", "2.5", "--max-users", "9", "--max-body-bytes", "5000"])
    assert result.exit_code == 0, result.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    settings = seen["app"].state.settings
    assert (settings.max_batch_users, settings.max_wait_ms, settings.max_users, settings.max_body_bytes) == (7, 2.5, 9, 5000)
    result = runner.invoke(app, ["serve", "--checkpoint", str(checkpoint), "--max-users", "0"])
    assert result.exit_code == 2 and "max_users must be >= 1" in result.output


def unchosen_copy(checkpoint, tmp_path):
    """The fixture's checkpoint as ``t2arec run`` writes it when no step was significant on validation."""
    import shutil

    from t2arec.pipeline import store_align_in_checkpoint
    from t2arec.serve import Recommender

    copy = tmp_path / "unchosen"
    shutil.copy(checkpoint, copy)
    align = Recommender.load(checkpoint).config.align
    store_align_in_checkpoint(copy, {**vars(align), "enabled": False})
    return copy


def test_no_step_chosen_means_no_step_unless_align_forces_it(tmp_path, checkpoint, recommender, data):
    from t2arec.serve import Recommender

    unchosen = unchosen_copy(checkpoint, tmp_path)
    assert not Recommender.load(unchosen).aligns and Recommender.load(unchosen, align=True).aligns
    users = list(range(6))
    histories, now = write_requests(tmp_path / "in.jsonl", recommender, data, users)
    outputs = {}
    for flags in ((), ("--align",), ("--no-align",)):
        result = runner.invoke(app, ["recommend", "--checkpoint", str(unchosen), "--input", str(tmp_path / "in.jsonl"),
                                     "--k", "5", *flags])
        assert result.exit_code == 0, result.output
        outputs[flags] = [json.loads(line) for line in result.stdout.splitlines()]
    expected = {flag: [{"id": f"u{u}", **r.to_dict()} for u, r in
                       zip(users, recommender.recommend(histories, now, k=5, align=flag, requests=users))]
                for flag in (True, False)}
    assert outputs[()] == outputs[("--no-align",)] == expected[False]  # the checkpoint's choice: no step
    assert outputs[("--align",)] == expected[True] != expected[False]  # forced: the stored step


def test_serve_follows_the_checkpoints_choice_unless_told(monkeypatch, tmp_path, checkpoint):
    import uvicorn

    unchosen = unchosen_copy(checkpoint, tmp_path)
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: seen.update(app=application, **kw))
    for flags, aligns in (((), False), (("--align",), True), (("--no-align",), False)):
        result = runner.invoke(app, ["serve", "--checkpoint", str(unchosen), *flags])
        assert result.exit_code == 0, result.output
        assert seen["app"].state.recommender.aligns is aligns, flags
    result = runner.invoke(app, ["serve", "--checkpoint", str(checkpoint), "--no-align"])
    assert result.exit_code == 0 and seen["app"].state.recommender.aligns is False


def test_align_scope_flag_of_serve_and_recommend(monkeypatch, tmp_path, checkpoint, recommender, data):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: seen.update(app=application, **kw))
    for flags, scope in (((), "request"), (("--align-scope", "batch"), "batch"),
                         (("--align-scope", "request"), "request")):
        result = runner.invoke(app, ["serve", "--checkpoint", str(checkpoint), *flags])
        assert result.exit_code == 0, result.output
        assert seen["app"].state.recommender.scope == scope, flags
    write_requests(tmp_path / "in.jsonl", recommender, data, [0])
    for command in (["serve"], ["recommend", "--input", str(tmp_path / "in.jsonl")]):
        result = runner.invoke(app, [*command, "--checkpoint", str(checkpoint), "--align-scope", "user"])
        assert result.exit_code == 2 and "scope must be 'batch' or 'request'" in result.output, result.output
