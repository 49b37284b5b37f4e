"""Variants of bench/run.py back to back in one invocation, one table: the "same run" comparisons
of docs/scaling.md (one node against the 3-node cluster, one api process against two on
PostgreSQL) and docs/operations.md (JetStream's `sync_interval` default against `always`).

    .venv/bin/python bench/compare.py scale --db postgresql+asyncpg://postgres@127.0.0.1:5432/postgres \\
        -- --big 0 --sleep-jobs 0 --rates 100 --latency-seconds 10
    .venv/bin/python bench/compare.py durability --rounds 2 -- --big 0 --sleep-jobs 0 --rates 100

Each variant is its own run.py process (its own stack, fresh database), in turn; with `--rounds N`
the variants alternate N times (A B A B …), so a machine that slows down or speeds up during the
session weighs on every variant alike. Every run's record is kept in bench/results/ as run.py
writes it, and the combined table goes to bench/results/compare-<set>-<ts>.json.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def variants(name: str, db: str | None) -> dict[str, list[str]]:
    """Each variant's label → its run.py arguments."""
    if name == "durability":
        return {"sync_interval default": [], "sync_interval always": ["--nats-sync", "always"]}
    if not db:
        sys.exit("compare.py scale: --db postgresql+asyncpg://… (the 1- and 2-api variants need PostgreSQL)")
    return {
        "one node, SQLite": [],
        "3-node cluster, SQLite": ["--cluster"],
        "PostgreSQL, 1 api": ["--db", db],
        "PostgreSQL, 2 apis": ["--db", db, "--apis", "2"],
    }


def merge(tables: list[tuple[str, list[list[str]]]]) -> list[list[str]]:
    """One row per figure (in the order they first appear), the `value` column of each run."""
    order: list[str] = []
    values: dict[str, dict[str, str]] = {}
    for label, rows in tables:
        for row in rows[1:]:  # rows[0] is run.py's header
            figure = row[0]
            if figure not in values:
                order.append(figure)
                values[figure] = {}
            values[figure][label] = row[1]
    labels = [label for label, _ in tables]
    return [["figure", *labels]] + [[f, *(values[f].get(label, "–") for label in labels)] for f in order]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/compare.py", description=__doc__.split("\n\n")[0])
    p.add_argument("set", choices=["scale", "durability"])
    p.add_argument("--db", help="PostgreSQL server for the scale set's PostgreSQL variants")
    p.add_argument("--rounds", type=int, default=1, help="times each variant runs, alternating (default 1)")
    p.epilog = "After --: arguments for every run.py run."
    argv = sys.argv[1:] if argv is None else argv
    # Split at `--` by hand: argparse gives a trailing nargs="*" positional nothing once the
    # first positional is taken, and then refuses the rest as unrecognized.
    cut = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:cut])
    args.run_args = argv[cut + 1 :]
    started = datetime.now(UTC)
    tables: list[tuple[str, list[list[str]]]] = []
    with tempfile.TemporaryDirectory(prefix="taskyard-compare-") as tmp:
        for round_no in range(1, args.rounds + 1):
            for label, extra in variants(args.set, args.db).items():
                out = Path(tmp) / f"{len(tables)}.json"
                cmd = [
                    sys.executable,
                    str(ROOT / "bench" / "run.py"),
                    *extra,
                    *args.run_args,
                    "--out",
                    str(out),
                ]
                print(f"== {label} (round {round_no}): {' '.join(cmd[1:])}", flush=True)
                if subprocess.run(cmd, check=False).returncode != 0:
                    print(f"compare.py: the {label} run failed", file=sys.stderr)
                    return 1
                record = json.loads(out.read_text())
                name = label if args.rounds == 1 else f"{label} #{round_no}"
                tables.append((name, record["table"]))
    rows = merge(tables)
    print(f"\nTaskyard bench compare ({args.set}), {started:%Y-%m-%d %H:%M}–{datetime.now(UTC):%H:%M} UTC\n")
    from run import print_table  # bench/run.py, beside this script (heavy: imported to print)

    print_table(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"compare-{args.set}-{started:%Y%m%dT%H%M%SZ}.json"
    path.write_text(
        json.dumps({"started_at": started.isoformat(), "set": args.set, "table": rows}, indent=2) + "\n"
    )
    print(f"\nwrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
