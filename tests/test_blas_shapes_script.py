"""benchmarks/blas_shapes.py: the shapes whose products differ from the full product."""
import json
import sys

from tests.benchmark_scripts import load_benchmark


def test_reports_raw_and_padded_shapes_for_both_thread_counts(monkeypatch, capsys):
    script = load_benchmark("blas_shapes")
    monkeypatch.setattr(sys, "argv", ["blas_shapes.py"])
    script.main()
    report = json.loads(capsys.readouterr().out)
    assert report["min_rows"] == 16 and report["min_columns"] == 64
    for threads in ("threads_1", "threads_2"):
        for kind in ("raw_product", "item_table"):
            assert set(report[threads][kind]) == {"rows", "block_widths"}
        # what the library promises (serving isolation, ranks by blocks): no shape differs once padded
        assert report[threads]["item_table"] == {"rows": [], "block_widths": []}


def test_a_shape_dependent_product_is_reported():
    script = load_benchmark("blas_shapes")

    def rounds_by_shape(query, weight, start, stop):  # rows depend on the batch size, columns never
        exact = (query.double() @ weight[start:stop].double().T).float()  # float64 rounded: shape-free here
        return exact + 1e-3 * query.shape[0]

    found = script.differing_shapes(rounds_by_shape, items=200)
    assert found["rows"] == list(range(1, 64)) and found["block_widths"] == []
