"""python -m workload serve SERVICE --config FILE | seed-db --dsn DSN --seed N | tasks --seed N --count N"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg

from workload.config import SERVICES, ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workload")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run one service until stopped")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--config", type=Path, required=True, help="YAML or JSON service config")
    seed = sub.add_parser("seed-db", help="(re)create and fill the database from the task set's dataset")
    seed.add_argument("--dsn", required=True)
    seed.add_argument("--seed", type=int, default=1)
    seed.add_argument("--tasks", type=int, default=0, help="also print this many tasks (JSON lines)")
    tasks = sub.add_parser("tasks", help="print the task set as JSON lines")
    tasks.add_argument("--seed", type=int, default=1)
    tasks.add_argument("--count", type=int, default=30)
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            from workload.services import run_service

            run_service(args.service, args.config)
        elif args.command == "seed-db":
            from workload.db import seed_database

            counts = seed_database(args.dsn, args.seed)
            print(" ".join(f"{table}={n}" for table, n in counts.items()), file=sys.stderr)
            _print_tasks(args.seed, args.tasks)
        else:
            _print_tasks(args.seed, args.count)
    except (ConfigError, psycopg.OperationalError) as exc:
        print(f"error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


def _print_tasks(seed: int, count: int) -> None:
    from workload.tasks import make_tasks

    for task in make_tasks(seed, count):
        print(task.model_dump_json())


if __name__ == "__main__":
    sys.exit(main())
