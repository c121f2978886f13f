"""The study ledger (SQLite): every finished cell, build and profile, keyed by what produced it,
so a rerun recomputes nothing that is still valid and a killed run loses nothing finished."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs(id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL, finished_at REAL,
    recipe TEXT, computed TEXT);
CREATE TABLE IF NOT EXISTS variants(variant TEXT PRIMARY KEY, key TEXT, position INTEGER, status TEXT,
    reason TEXT, steps TEXT, model_dir TEXT, build TEXT, footprint TEXT, profile TEXT, disk_bytes INTEGER,
    updated_at REAL);
CREATE TABLE IF NOT EXISTS cells(variant TEXT, cell TEXT, task TEXT, key TEXT, metrics TEXT,
    finished_at REAL, PRIMARY KEY(variant, cell));
CREATE TABLE IF NOT EXISTS stages(variant TEXT, stage INTEGER, method TEXT, cell TEXT, key TEXT,
    metrics TEXT, footprint TEXT, PRIMARY KEY(variant, stage, cell));
"""


class Ledger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.row_factory = sqlite3.Row
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # runs -----------------------------------------------------------------
    def start_run(self, recipe: dict) -> int:
        with self.db:
            cur = self.db.execute("INSERT INTO runs(started_at, recipe, computed) VALUES (?, ?, '[]')",
                                  (time.time(), json.dumps(recipe)))
        return int(cur.lastrowid)

    def finish_run(self, run_id: int, computed: list[str]) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET finished_at=?, computed=? WHERE id=?",
                            (time.time(), json.dumps(computed), run_id))

    def last_run(self) -> dict | None:
        row = self.db.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return dict(row) if row else None

    # variants -------------------------------------------------------------
    def upsert_variant(self, variant: str, key: str, **fields: Any) -> None:
        fields = {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in fields.items()}
        existing = self.variant(variant)
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
                                (*fields.values(), time.time(), variant))

    def variant(self, variant: str) -> dict | None:
        row = self.db.execute("SELECT * FROM variants WHERE variant=?", (variant,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        for k in ("steps", "build", "footprint", "profile"):
            if out.get(k):
                out[k] = json.loads(out[k])
        return out

    def variants(self) -> list[dict]:
        names = [r[0] for r in self.db.execute("SELECT variant FROM variants ORDER BY position, variant")]
        return [v for n in names if (v := self.variant(n)) is not None]

    # cells ----------------------------------------------------------------
    def cell(self, variant: str, cell: str, key: str) -> dict | None:
        row = self.db.execute("SELECT metrics, key FROM cells WHERE variant=? AND cell=?", (variant, cell)).fetchone()
        if row is None or row["key"] != key:
            return None
        return json.loads(row["metrics"])

    def put_cell(self, variant: str, cell: str, task: str, key: str, metrics: dict) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?)",
                            (variant, cell, task, key, json.dumps(metrics), time.time()))

    def cells(self) -> list[dict]:
        rows = self.db.execute("SELECT variant, cell, task, metrics FROM cells").fetchall()
        return [{"variant": r["variant"], "cell": r["cell"], "task": r["task"], **json.loads(r["metrics"])}
                for r in rows]

    # stages (intermediate steps of a chain) -------------------------------
    def stage(self, variant: str, stage: int, cell: str, key: str) -> dict | None:
        row = self.db.execute("SELECT metrics, key FROM stages WHERE variant=? AND stage=? AND cell=?",
                              (variant, stage, cell)).fetchone()
        if row is None or row["key"] != key:
            return None
        return json.loads(row["metrics"])

    def put_stage(self, variant: str, stage: int, method: str, cell: str, key: str, metrics: dict,
                  footprint: dict) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO stages VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (variant, stage, method, cell, key, json.dumps(metrics), json.dumps(footprint)))

    def stages(self) -> list[dict]:
        rows = self.db.execute("SELECT * FROM stages ORDER BY variant, stage, cell").fetchall()
        return [{**dict(r), "metrics": json.loads(r["metrics"]), "footprint": json.loads(r["footprint"])}
                for r in rows]
