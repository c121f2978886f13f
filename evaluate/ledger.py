"""The study ledger (SQLite): every finished cell, build and profile as typed records (evaluate/records.py),
keyed by what produced it, so a rerun recomputes nothing that is still valid and a killed run loses nothing
finished. Only the study's driver process writes it."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from evaluate.records import (
    SCHEMA_VERSION,
    CellMetrics,
    CellRecord,
    Footprint,
    RunRecord,
    StageRecord,
    VariantRecord,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs(id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL, finished_at REAL,
    status TEXT, pid INTEGER, host TEXT, recipe TEXT, computed TEXT);
CREATE TABLE IF NOT EXISTS variants(variant TEXT PRIMARY KEY, key TEXT, position INTEGER, status TEXT,
    reason TEXT, steps TEXT, model_dir TEXT, build TEXT, footprint TEXT, profile TEXT, disk_bytes INTEGER,
    updated_at REAL);
CREATE TABLE IF NOT EXISTS cells(variant TEXT, cell TEXT, task TEXT, key TEXT, metrics TEXT,
    finished_at REAL, PRIMARY KEY(variant, cell));
CREATE TABLE IF NOT EXISTS stages(variant TEXT, stage INTEGER, method TEXT, cell TEXT, key TEXT,
    metrics TEXT, footprint TEXT, PRIMARY KEY(variant, stage, cell));
"""
_JSON_COLUMNS = ("steps", "build", "footprint", "profile")


WriteMethod = Literal["upsert_variant", "put_cell", "put_stage", "add_computed"]


@dataclass(frozen=True)
class LedgerWrite:
    """One write to the ledger as a record: what a Ray worker sends to the driver, the ledger's one writer, and
    what the driver sends a worker to seed its private copy of a variant's rows."""

    method: WriteMethod
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def apply(self, ledger: Ledger) -> None:
        if self.method not in ("upsert_variant", "put_cell", "put_stage", "add_computed"):
            raise ValueError(f"not a ledger write: {self.method!r}")
        getattr(ledger, self.method)(*self.args, **self.kwargs)


class LedgerSchemaError(RuntimeError):
    """A ledger written by another version of slimlab's records: never read as if it were this one."""


def _encode(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


class Ledger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=30, check_same_thread=False)  # one user at a time (Ray task thread)
        self.db.row_factory = sqlite3.Row
        self._check_schema()

    def _check_schema(self) -> None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" in tables:
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            found = int(row[0]) if row else None
        elif "variants" in tables and self.db.execute("SELECT count(*) FROM variants").fetchone()[0]:
            found = 1  # written before records had a version
        else:
            found = SCHEMA_VERSION
        if found != SCHEMA_VERSION:
            self.db.close()
            raise LedgerSchemaError(
                f"{self.path} was written by another version of slimlab (ledger schema {found}; this version "
                f"reads schema {SCHEMA_VERSION}); run the study into a new output directory (or move this one "
                "away): its results would not be comparable field by field")
        with self.db:
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self.db.close()

    # runs -----------------------------------------------------------------
    def start_run(self, recipe: dict) -> int:
        with self.db:
            cur = self.db.execute("INSERT INTO runs(started_at, status, pid, host, recipe, computed) "
                                  "VALUES (?, 'running', ?, ?, ?, '[]')",
                                  (time.time(), os.getpid(), socket.gethostname(), json.dumps(recipe)))
        return int(cur.lastrowid)

    def add_computed(self, run_id: int, what: str) -> None:
        """Record a finished piece of work as it finishes (a killed run keeps what it did)."""
        with self.db:
            row = self.db.execute("SELECT computed FROM runs WHERE id=?", (run_id,)).fetchone()
            done = json.loads(row["computed"]) if row else []
            self.db.execute("UPDATE runs SET computed=? WHERE id=?", (json.dumps([*done, what]), run_id))

    def finish_run(self, run_id: int, status: str = "finished") -> None:
        with self.db:
            self.db.execute("UPDATE runs SET finished_at=?, status=? WHERE id=?", (time.time(), status, run_id))

    def runs(self) -> list[RunRecord]:
        rows = self.db.execute("SELECT * FROM runs ORDER BY id").fetchall()
        return [RunRecord(**{**dict(r), "recipe": json.loads(r["recipe"] or "{}"),
                             "computed": json.loads(r["computed"] or "[]")}) for r in rows]

    def last_run(self) -> RunRecord | None:
        runs = self.runs()
        return runs[-1] if runs else None

    # variants -------------------------------------------------------------
    def upsert_variant(self, variant: str, key: str, **fields: Any) -> None:
        """Create or update a variant's row; a new key (the recipe changed what it is) drops its old results."""
        existing = self.db.execute("SELECT key FROM variants WHERE variant=?", (variant,)).fetchone()
        if existing is None or existing["key"] != key:
            with self.db:
                self.db.execute("DELETE FROM variants WHERE variant=?", (variant,))
                self.db.execute("DELETE FROM cells WHERE variant=?", (variant,))
                self.db.execute("DELETE FROM stages WHERE variant=?", (variant,))
                self.db.execute("INSERT INTO variants(variant, key, updated_at) VALUES (?, ?, ?)",
                                (variant, key, time.time()))
        if fields:
            cols = ", ".join(f"{k}=?" for k in fields)
            with self.db:
                self.db.execute(f"UPDATE variants SET {cols}, updated_at=? WHERE variant=?",
                                (*(_encode(v) for v in fields.values()), time.time(), variant))

    def variant(self, variant: str) -> VariantRecord | None:
        row = self.db.execute("SELECT * FROM variants WHERE variant=?", (variant,)).fetchone()
        if row is None:
            return None
        data = {k: (json.loads(v) if k in _JSON_COLUMNS and v else v) for k, v in dict(row).items()}
        data["steps"] = data.get("steps") or []
        return VariantRecord.model_validate(data)

    def variants(self) -> list[VariantRecord]:
        names = [r[0] for r in self.db.execute("SELECT variant FROM variants ORDER BY position, variant")]
        return [v for n in names if (v := self.variant(n)) is not None]

    # cells ----------------------------------------------------------------
    def cell(self, variant: str, cell: str, key: str) -> CellMetrics | None:
        row = self.db.execute("SELECT metrics, key FROM cells WHERE variant=? AND cell=?", (variant, cell)).fetchone()
        if row is None or row["key"] != key:
            return None
        return CellMetrics.model_validate_json(row["metrics"])

    def put_cell(self, variant: str, cell: str, task: str, key: str, metrics: CellMetrics) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?)",
                            (variant, cell, task, key, metrics.model_dump_json(), time.time()))

    def cells(self) -> list[CellRecord]:
        rows = self.db.execute("SELECT variant, cell, task, metrics FROM cells").fetchall()
        return [CellRecord(variant=r["variant"], cell=r["cell"], task=r["task"],
                           metrics=CellMetrics.model_validate_json(r["metrics"])) for r in rows]

    # stages (intermediate steps of a chain) -------------------------------
    def stage(self, variant: str, stage: int, cell: str, key: str) -> CellMetrics | None:
        row = self.db.execute("SELECT metrics, key FROM stages WHERE variant=? AND stage=? AND cell=?",
                              (variant, stage, cell)).fetchone()
        if row is None or row["key"] != key:
            return None
        return CellMetrics.model_validate_json(row["metrics"])

    def put_stage(self, variant: str, stage: int, method: str, cell: str, key: str, metrics: CellMetrics,
                  footprint: Footprint | None) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (variant, stage, method, cell, key, metrics.model_dump_json(),
                             footprint.model_dump_json() if footprint else None))

    def snapshot(self, variant: str) -> list[LedgerWrite]:
        """The writes that recreate a variant's rows (its variant row, cells and stages, with their keys)."""
        row = self.db.execute("SELECT * FROM variants WHERE variant=?", (variant,)).fetchone()
        if row is None:
            return []
        fields = {k: (json.loads(v) if k in _JSON_COLUMNS and v else v) for k, v in dict(row).items()
                  if k not in ("variant", "key", "updated_at")}
        writes = [LedgerWrite("upsert_variant", (variant, row["key"]), fields)]
        for r in self.db.execute("SELECT * FROM cells WHERE variant=?", (variant,)):
            writes.append(LedgerWrite("put_cell", (variant, r["cell"], r["task"], r["key"],
                                                   CellMetrics.model_validate_json(r["metrics"]))))
        for r in self.db.execute("SELECT * FROM stages WHERE variant=?", (variant,)):
            footprint = Footprint.model_validate_json(r["footprint"]) if r["footprint"] else None
            writes.append(LedgerWrite("put_stage", (variant, r["stage"], r["method"], r["cell"], r["key"],
                                                    CellMetrics.model_validate_json(r["metrics"]), footprint)))
        return writes

    def stages(self) -> list[StageRecord]:
        rows = self.db.execute("SELECT * FROM stages ORDER BY variant, stage, cell").fetchall()
        return [StageRecord(variant=r["variant"], stage=r["stage"], method=r["method"], cell=r["cell"],
                            metrics=CellMetrics.model_validate_json(r["metrics"]),
                            footprint=Footprint.model_validate_json(r["footprint"]) if r["footprint"] else None)
                for r in rows]


class JournaledLedger(Ledger):
    """A private in-memory ledger that also hands every write to `sink`: a Ray worker reads and writes it like
    the real one while the driver, which applies the same writes to the study's SQLite file, stays its only
    writer (no SQLite over a network file system, no two processes writing one file)."""

    def __init__(self, sink: Callable[[LedgerWrite], None], seed: Iterable[LedgerWrite] = ()) -> None:
        super().__init__(Path(":memory:"))
        self.sink: Callable[[LedgerWrite], None] | None = None
        for write in seed:
            write.apply(self)
        self.sink = sink

    def _send(self, method: WriteMethod, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
        if self.sink is not None:
            self.sink(LedgerWrite(method, args, kwargs or {}))

    def upsert_variant(self, variant: str, key: str, **fields: Any) -> None:
        super().upsert_variant(variant, key, **fields)
        self._send("upsert_variant", (variant, key), fields)

    def put_cell(self, variant: str, cell: str, task: str, key: str, metrics: CellMetrics) -> None:
        super().put_cell(variant, cell, task, key, metrics)
        self._send("put_cell", (variant, cell, task, key, metrics))

    def put_stage(self, variant: str, stage: int, method: str, cell: str, key: str, metrics: CellMetrics,
                  footprint: Footprint | None) -> None:
        super().put_stage(variant, stage, method, cell, key, metrics, footprint)
        self._send("put_stage", (variant, stage, method, cell, key, metrics, footprint))

    def add_computed(self, run_id: int, what: str) -> None:
        self._send("add_computed", (run_id, what))  # the driver's run row; this copy has none
