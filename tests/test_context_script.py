"""benchmarks/context.py: context per training target, windows against every prefix."""
from tests.benchmark_scripts import load_benchmark


def write_log(path, lengths):
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user, length in enumerate(lengths):
        rows += [f"u{user}\ti{item}\t{1000 + 10 * item}" for item in range(length)]
    path.write_text("\n".join(rows) + "\n")


def test_counts_match_a_hand_computed_log(tmp_path, capsys):
    # one user of 7 items: a training part of 5 (targets 1..4), max length 3.
    # Non-overlapping windows from the end: targets 2, 3, 4 see 1, 2, 3 items; target 1 sees 1.
    # Every prefix: min(t, 3) for t = 1..4 -> 1, 2, 3, 3.
    log = tmp_path / "one.inter"
    write_log(log, [7])
    report = load_benchmark("context").main(["--data", str(log), "--max-len", "3", "--min-count", "1",
                                             "--strides", "3", "1"])
    capsys.readouterr()
    assert report["targets"] == 4
    assert report["every_prefix"] == {"sequences": 4, "tokens": 9, "mean_context": 2.25,
                                      "share_of_targets_in_longer_histories": 1.0}
    windows = report["strides"]["3"]
    assert (windows["windows"], windows["tokens"], windows["targets"]) == (2, 6, 4)
    assert windows["mean_context"] == 1.75
    assert windows["prefix_tokens_per_window_token"] == 9 / 6
    # stride 1: every target its own window of up to 3 items, which is every-prefix training
    assert report["strides"]["1"]["mean_context"] == 2.25 and report["strides"]["1"]["windows"] == 4


def test_short_histories_are_not_counted_as_longer_than_a_window(tmp_path, capsys):
    # users of 7 items (4 targets) and 4 items (1 target), max length 4: neither exceeds one window
    # at 4; at max length 3 only the first does, holding 4 of the 5 targets
    log = tmp_path / "two.inter"
    write_log(log, [7, 4])
    wide = load_benchmark("context").main(["--data", str(log), "--max-len", "4", "--min-count", "1"])
    narrow = load_benchmark("context").main(["--data", str(log), "--max-len", "3", "--min-count", "1"])
    capsys.readouterr()
    assert wide["every_prefix"]["share_of_targets_in_longer_histories"] == 0.0
    assert narrow["every_prefix"]["share_of_targets_in_longer_histories"] == 4 / 5
