"""The PostgreSQL database behind tool server 1 and the baseline chain."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import asdict
from typing import Any

import psycopg
from psycopg.rows import dict_row

from workload.tasks import make_dataset
from workload.telemetry import Telemetry, describe_error, sockname

SCHEMA = """
DROP TABLE IF EXISTS shipments, orders, customers;
CREATE TABLE customers (customer_id text PRIMARY KEY, name text NOT NULL, email text NOT NULL, city text NOT NULL);
CREATE TABLE orders (order_id text PRIMARY KEY, customer_id text NOT NULL REFERENCES customers,
  item text NOT NULL, quantity int NOT NULL, total numeric(10,2) NOT NULL, status text NOT NULL,
  ordered_on date NOT NULL);
CREATE TABLE shipments (order_id text PRIMARY KEY REFERENCES orders, carrier text NOT NULL,
  tracking_no text NOT NULL UNIQUE, status text NOT NULL, eta date NOT NULL);
"""

QUERIES: dict[str, str] = {
    "get_order": "SELECT order_id, customer_id, item, quantity, total::text AS total, status, "
    "ordered_on::text AS ordered_on FROM orders WHERE order_id = %s",
    "get_shipment": "SELECT order_id, carrier, tracking_no, status, eta::text AS eta "
    "FROM shipments WHERE order_id = %s",
    "get_customer": "SELECT customer_id, name, email, city FROM customers WHERE customer_id = %s",
}


def seed_database(dsn: str, seed: int) -> dict[str, int]:
    """(Re)create the tables and fill them from the task set's dataset; returns row counts."""
    data = make_dataset(seed)
    tables = {"customers": data.customers, "orders": data.orders, "shipments": data.shipments}
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        conn.execute(SCHEMA)
        for table, rows in tables.items():
            columns = list(asdict(rows[0]))
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
            with conn.cursor() as cur:
                cur.executemany(sql, [tuple(asdict(r).values()) for r in rows])
    return {table: len(rows) for table, rows in tables.items()}


class Database:
    """A small pool of async connections; every query is logged as a `db` call with the
    connection's socket addresses. Bytes are the query text plus parameters sent and the
    JSON size of the rows returned (the wire protocol adds framing)."""

    def __init__(self, dsn: str, telemetry: Telemetry, timeout_s: float, size: int = 4) -> None:
        self.dsn = dsn
        self.telemetry = telemetry
        self.timeout_s = timeout_s
        self._idle: asyncio.Queue[psycopg.AsyncConnection] = asyncio.Queue()
        self._slots = asyncio.Semaphore(size)
        self._reached = False

    async def problem(self) -> str | None:
        """For /healthz: None once the database answered a query, else what failed."""
        if not self._reached:
            try:
                async with await self._connect() as conn:
                    await conn.execute("SELECT 1 FROM orders LIMIT 1")
            except Exception as exc:  # any failure means not ready; say which
                return f"database: {describe_error(exc)}"
            self._reached = True
        return None

    async def _connect(self) -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(
            self.dsn,
            autocommit=True,
            row_factory=dict_row,
            connect_timeout=max(1, int(self.timeout_s)),
            options=f"-c statement_timeout={int(self.timeout_s * 1000)}",
        )

    async def fetch_one(self, name: str, *params: Any) -> dict[str, Any] | None:
        """Run the named query; the row as a dict, or None."""
        async with self._slots, self.telemetry.call("db", "postgres", name) as call:
            conn = self._idle.get_nowait() if not self._idle.empty() else await self._connect()
            call.use_socket(*_pg_socket(conn))
            call.req_bytes = len(QUERIES[name]) + sum(len(str(p)) for p in params)
            try:
                async with asyncio.timeout(self.timeout_s):
                    cur = await conn.execute(QUERIES[name], params)
                    row = await cur.fetchone()
            except BaseException:
                await conn.close()
                raise
            self._idle.put_nowait(conn)
            call.resp_bytes = len(json.dumps(row)) if row else 0
            return row


def _pg_socket(conn: psycopg.AsyncConnection) -> tuple[str, str]:
    sock = socket.socket(fileno=socket.dup(conn.pgconn.socket))
    try:
        if sock.family == socket.AF_UNIX:
            return f"unix:{sock.getsockname() or 'client'}", f"unix:{sock.getpeername()}"
        return sockname(sock)
    finally:
        sock.close()
