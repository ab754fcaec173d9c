import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';

/**
 * An experiment, off by default (BENCH_FERRETDB_ID_INDEX=1), NOT part of Abide as shipped.
 *
 * FerretDB 1.24's SQLite backend queries `_id` as `_ferretdb_sjson->'$._id' = ?` but creates the
 * `_id` index on `_ferretdb_sjson->"_id"`; SQLite only uses an expression index for the very same
 * expression, so every `_id` lookup, update and replace scans (and JSON-parses) the whole table
 * (FerretDB's own `explain` says `SCAN`). This adds, straight into FerretDB's SQLite file, a unique
 * index on the expression FerretDB queries with, for every collection table: what a fixed FerretDB
 * would do. FerretDB does not know about the index (it is not in its metadata) and does not need to.
 *
 * Returns the tables indexed (new ones only).
 */
export function addFerretDbIdIndexes(sqliteDir: string, database: string): string[] {
  const path = join(sqliteDir, `${database}.sqlite`);
  if (!existsSync(path)) return [];
  const db = new DatabaseSync(path, { timeout: 10_000 });
  try {
    const tables = db
      .prepare(`SELECT table_name AS name FROM _ferretdb_collections`)
      .all()
      .map((row) => String((row as { name: unknown }).name));
    const created: string[] = [];
    for (const table of tables) {
      const index = `${table}__id_bench_path`;
      const exists = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?`).get(index);
      if (exists) continue;
      db.exec(`CREATE UNIQUE INDEX IF NOT EXISTS "${index}" ON "${table}" (_ferretdb_sjson->'$._id')`);
      created.push(table);
    }
    return created;
  } finally {
    db.close();
  }
}
