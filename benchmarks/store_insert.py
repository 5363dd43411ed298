"""Seconds to store and read back one evaluation's per-image records (CUB's test split: 5,794 images).

A fresh store gets one run and ``--records`` image records in one ``add_image_records`` call, timed;
then ``get_image_records`` reads them back, timed. Repeated ``--repeats`` times (a new run each
time); min and median are printed. SQLite in a temporary folder by default; ``--url`` times another
store (e.g. a PostgreSQL database the benchmark may write into: it adds runs named ``bench-…``).

    python benchmarks/store_insert.py [--records 6000] [--repeats 5] [--url postgresql+psycopg://…]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import torch
from _common import dump, loadavg, machine, stats

from kdcicam.store import open_store


def _record(i: int) -> dict:
    return dict(image_id=f"img_{i:05d}", label=i % 200, top5=[i % 200, 1, 2, 3, 4],
                top5_scores=[0.5, 0.2, 0.1, 0.1, 0.1], box=[1.0, 2.0, 30.0, 40.0], iou=0.75,
                correct_top1_cls=True, correct_top5_cls=True, correct_top1_loc=False,
                correct_top5_loc=True, correct_gt_known=True)


def measure(url: str, records: int, repeats: int) -> dict[str, list[float]]:
    rows = [_record(i) for i in range(records)]
    times: dict[str, list[float]] = {"insert_s": [], "read_s": []}
    with open_store(url) as store:
        for _ in range(repeats):
            run_id = f"bench-{uuid.uuid4().hex[:10]}"
            store.get_or_create_run(run_id, config_hash=run_id, role="student", profile="smoke",
                                    variant="reference", dataset="synthetic", seed=0, config={})
            start = time.perf_counter()
            store.add_image_records(run_id, "paper", "last", "test", rows)
            times["insert_s"].append(time.perf_counter() - start)
            start = time.perf_counter()
            frame = store.get_image_records(run_id, "paper", "last", "test")
            times["read_s"].append(time.perf_counter() - start)
            assert len(frame) == records
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--url", help="a store URL to time instead of a fresh SQLite file")
    parser.add_argument("--json", help="write every measurement here")
    args = parser.parse_args()
    facts = machine(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'runs.db'}"
        times = measure(url, args.records, args.repeats)
    facts["loadavg_end"] = loadavg()
    backend = url.split(":", 1)[0]
    print(f"{args.records:,} image records, {args.repeats} repeats, {backend}; {facts['device']}, "
          f"load {facts['loadavg_start'][0]} -> {facts['loadavg_end'][0]}")
    for name, values in times.items():
        figures = stats(values)
        print(f"  {name:9s} min {figures['min']:.3f} s  median {figures['median']:.3f} s")
    dump({"backend": backend, "records": args.records, **{k: stats(v) for k, v in times.items()},
          "machine": facts}, args.json)


if __name__ == "__main__":
    main()
