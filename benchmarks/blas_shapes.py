"""Which product shapes give other bits than the full product, on this machine's BLAS.

A score must not depend on the batch or the block it was computed in (serving isolation, ranks by
blocks). BLAS libraries use other kernels for small products, which sum in another order. This script
reports, for 1 and 2 threads, the query row counts whose rows differ from the same rows of a 64-row
product, and the block widths whose columns differ from the full product's, both for the raw
``query @ weight.T`` and for ``ItemTable.scores`` with ``min_rows=MIN_ROWS`` (padded to
``MIN_ROWS`` x ``MIN_COLUMNS``, as per-request alignment scores).

    python benchmarks/blas_shapes.py                  # prints JSON
    python benchmarks/blas_shapes.py --padding-cost   # + ms of a million-item product, rows padded
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from t2arec.models.base import MIN_COLUMNS, MIN_ROWS, ItemTable

WIDTHS = (1, 7, 16, 31, 32, 64, 257)


def differing_shapes(product, hidden: int = 64, items: int = 3000) -> dict:  # noqa: ANN001
    """Row counts 1..63 and block widths in ``WIDTHS`` (every block of that width across the items)
    whose products are not bit-identical to the full one."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(64, hidden, generator=generator)
    weight = torch.randn(items, hidden, generator=generator)
    full = product(query, weight, 0, items)
    rows = [n for n in range(1, 64) if not torch.equal(product(query[:n], weight, 0, items), full[:n])]
    widths = []
    for width in WIDTHS:
        blocks = [product(query, weight, s, min(s + width, items)) for s in range(0, items, width)]
        if not torch.equal(torch.cat(blocks, dim=1), full):
            widths.append(width)
    return {"rows": rows, "block_widths": widths}


def raw(query, weight, start, stop):  # noqa: ANN001, ANN201
    return query @ weight[start:stop].T


def table(query, weight, start, stop):  # noqa: ANN001, ANN201
    return ItemTable(weight).scores(query, start, stop, min_rows=MIN_ROWS)


def padding_cost(items: int = 1_000_000, hidden: int = 64, repeats: int = 10) -> dict:
    """Milliseconds of ``ItemTable.scores`` over ``items`` items for 1, 8 and 16 query rows, each
    padded to 1, 8 and 16 rows (``min_rows``), mean of ``repeats`` calls after one warm-up."""
    weight = torch.randn(items, hidden)
    table = ItemTable(weight)
    out = {}
    for rows in (1, 8, 16):
        query = torch.randn(rows, hidden)
        for pad in (p for p in (1, 8, 16) if p >= rows):
            table.scores(query, min_rows=pad)
            began = time.perf_counter()
            for _ in range(repeats):
                table.scores(query, min_rows=pad)
            out[f"rows_{rows}_padded_to_{pad}"] = round((time.perf_counter() - began) / repeats * 1000, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--padding-cost", action="store_true", help="also time a million-item product")
    args = parser.parse_args()
    report = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "blas": "mkl" if torch.backends.mkl.is_available() else "other",
              "min_rows": MIN_ROWS, "min_columns": MIN_COLUMNS, "widths_tried": list(WIDTHS)}
    before = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        report[f"threads_{threads}"] = {"raw_product": differing_shapes(raw), "item_table": differing_shapes(table)}
    torch.set_num_threads(before)
    if args.padding_cost:
        report["padding_cost_ms"] = padding_cost()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
