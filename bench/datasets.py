"""Dataset import rate: `promptdex import-dataset diffusiondb` over generated DiffusionDB-layout zip archives (1,000
small distinct PNGs and a part-NNNNNN.json each), against `promptdex import` of the same images as loose files in the
same run (the baseline), on a fresh embedded PostgreSQL each. Peak RSS is sampled through the run to show that memory
stays flat as the row count grows (streaming).

    python -m bench.datasets --rows 20000 --out bench/results/datasets
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from bench.common import finish, load_average, log, machine

PER_PART = 1000
Sample = tuple[float, int, float]  # (seconds since the start, rows done, RSS MiB)


def make_dataset(root: Path, files: Path, rows: int, seed: int = 0, *, loose: int | None = None) -> int:
    """DiffusionDB's layout under `root` (images/part-NNNNNN.zip) and the first `loose` (default: all) of the same
    images as loose files under `files`. Returns the bytes written to the archives."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    samplers = ["k_lms", "k_euler_a", "k_euler", "ddim", "plms", "k_dpm_2"]
    total, loose = 0, rows if loose is None else loose
    parts = (rows + PER_PART - 1) // PER_PART
    for part in tqdm(range(1, parts + 1), desc="make archives", unit="part", file=sys.stderr):
        entries = {}
        folder = files / f"part-{part:06d}"
        with zipfile.ZipFile(root / "images" / f"part-{part:06d}.zip", "w") as archive:
            for i in range(min(PER_PART, rows - (part - 1) * PER_PART)):
                name = f"{part:06d}{i:04d}-0000-4000-8000-000000000000.png"
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
                archive.writestr(name, buffer.getvalue())
                if (part - 1) * PER_PART + i < loose:
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / name).write_bytes(buffer.getvalue())
                entries[name] = {"p": f"a photo of subject {part * PER_PART + i}, trending on artstation",
                                 "se": int(rng.integers(0, 2**32)), "c": 7.0, "st": 50, "sa": samplers[i % 6]}
            archive.writestr(f"part-{part:06d}.json", json.dumps(entries))
        total += (root / "images" / f"part-{part:06d}.zip").stat().st_size
    return total


class RssSampler:
    """This process's resident memory, sampled every 0.25 s: (seconds since the start, rows done so far, MiB)."""

    def __init__(self, progress: list[int]) -> None:
        self.samples: list[Sample] = []
        self.started = time.perf_counter()
        self.progress, self.stop = progress, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self.stop.wait(0.25):
            with open("/proc/self/statm") as handle:
                rss = int(handle.read().split()[1]) * page / 2**20
            self.samples.append((round(time.perf_counter() - self.started, 2), self.progress[0], round(rss, 1)))

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _settings(data: Path) -> Any:
    from promptdex.settings import get_settings

    return get_settings(_env_file=None, data_dir=data, database_url=None)


def run_dataset_import(root: Path, data: Path, first: int) -> dict[str, Any]:
    """The import, timed; also its rate over each tenth of the rows and over its `first` rows (the baseline's size)."""
    from indexer.datasets.core import import_dataset
    from indexer.datasets.layouts import Options, open_dataset
    from promptdex.db import open_database

    settings = _settings(data)
    database = open_database(settings)
    progress = [0]
    try:
        with database.connect(autocommit=True) as conn:
            dataset = open_dataset("diffusiondb", root, Options())
            for unit in dataset.units:  # count rows as parts finish, for the memory samples
                inner = unit.items

                def counted(skip: int, inner: Any = inner) -> Any:
                    for item in inner(skip):
                        progress[0] += 1
                        yield item

                unit.items = counted
            cpu0, t0 = time.process_time(), time.perf_counter()
            with RssSampler(progress) as rss:
                summary = import_dataset(conn, settings, dataset, progress=False)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        database.close()
    return {"rows": summary.items, "imported": summary.imported, "errors": len(summary.errors),
            "seconds": round(seconds, 2), "rows_per_s": round(summary.items / seconds, 1),
            "cpu_ms_per_row": round(1000 * cpu / max(1, summary.items), 3), "rss_samples": _thin(rss.samples),
            "rate_by_decile": _rates(rss.samples, summary.items), "first_rows": _first_rows(rss.samples, first)}


def _reached(samples: list[Sample], rows: int) -> Sample | None:
    """The first sample taken once `rows` rows were done."""
    return next((s for s in samples if s[1] >= rows), None)


def _rates(samples: list[Sample], rows: int) -> list[dict[str, float]]:
    """Rows/s over each tenth of the rows (from the samples' times), to show whether the rate holds as the tables
    grow."""
    out, start = [], (0.0, 0)
    for tenth in range(1, 11):
        mark = _reached(samples, rows * tenth // 10)
        if mark is None:
            break
        out.append({"rows_to": mark[1], "rows_per_s": round((mark[1] - start[1]) / max(1e-9, mark[0] - start[0]), 1)})
        start = (mark[0], mark[1])
    return out


def run_folder_import(files: Path, data: Path) -> dict[str, Any]:
    from indexer.importer import import_paths
    from promptdex.db import open_database

    settings = _settings(data)
    database = open_database(settings)
    try:
        with database.connect(autocommit=True) as conn:
            cpu0, t0 = time.process_time(), time.perf_counter()
            summary = import_paths(conn, settings, [files], progress=False)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        database.close()
    return {"rows": summary.files, "imported": summary.imported, "errors": len(summary.errors),
            "seconds": round(seconds, 2), "rows_per_s": round(summary.files / seconds, 1),
            "cpu_ms_per_row": round(1000 * cpu / max(1, summary.files), 3)}


def _first_rows(samples: list[Sample], rows: int) -> dict[str, Any]:
    """The rate over the first `rows` rows, from the samples."""
    mark = _reached(samples, rows)
    return {} if mark is None else {"rows": mark[1], "rows_per_s": round(mark[1] / mark[0], 1)}


def _thin(samples: list[Sample], keep: int = 20) -> list[Sample]:
    step = max(1, len(samples) // keep)
    return samples[::step] + samples[-1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--baseline-rows", type=int, help="loose files for the baseline (default: --rows); the "
                        "dataset import's rate over its own first as many rows is reported beside it")
    parser.add_argument("--out", type=Path, default=Path("bench/results/datasets"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    baseline_rows = min(args.rows, args.baseline_rows or args.rows)
    log(f"making {args.rows} rows of DiffusionDB archives ({baseline_rows} also as loose files)")
    size = make_dataset(work / "ddb", work / "files", args.rows, loose=baseline_rows)
    load = load_average()
    log("import-dataset diffusiondb")
    dataset = run_dataset_import(work / "ddb", work / "data-dataset", baseline_rows)
    log(f"  {dataset['rows_per_s']} rows/s; promptdex import of the same images as files (baseline)")
    folder = run_folder_import(work / "files", work / "data-folder")
    log(f"  {folder['rows_per_s']} files/s")
    first_rows = dataset.pop("first_rows")
    if first_rows:
        first_rows["ratio"] = round(first_rows["rows_per_s"] / folder["rows_per_s"], 2)
    result = {"command": "python -m bench.datasets " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": machine(), "rows": args.rows, "archive_mib": round(size / 2**20, 1),
              "load_average_start": load, "load_average_end": load_average(),
              "import_dataset": dataset, "import_files_baseline": folder,
              "ratio_rows_per_s": round(dataset["rows_per_s"] / folder["rows_per_s"], 2),
              "dataset_first_rows": first_rows,
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    finish(args.out, result, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
