-- The read models eventflow keeps beside its event log (projections.db).
-- They are disposable: `eventflow replay` rebuilds them from the log at any time.
-- Query them directly with sqlite3 or sqlite-utils; never write to them.
-- Beside a PostgreSQL log the same tables live in the log's schema (shell/projections_pg.py).

CREATE TABLE IF NOT EXISTS materials (
    id            TEXT PRIMARY KEY,
    formula       TEXT,
    workflow      TEXT,
    code          TEXT,
    state         TEXT NOT NULL,   -- registered|ready|running|waiting|held|needs_attention|completed|cancelled
    current_step  TEXT,
    attempts      INTEGER NOT NULL, -- calculation attempts of every step so far
    reason        TEXT,            -- why it needs attention, waits, is held
    updated_at    TEXT,
    last_seq      INTEGER NOT NULL,
    cluster       TEXT             -- where its latest submitted job runs (JobSubmitted's scheduler)
);
CREATE INDEX IF NOT EXISTS materials_state ON materials (state);

CREATE TABLE IF NOT EXISTS calculations (
    id            TEXT PRIMARY KEY, -- material/step/attempt
    material_id   TEXT NOT NULL,
    step          TEXT NOT NULL,
    attempt       INTEGER NOT NULL,
    state         TEXT NOT NULL,   -- requested|submitted|running|completed|failed|lost|cancelled
    job_id        TEXT,
    directory     TEXT,
    error_kind    TEXT,
    requested_at  TEXT,
    started_at    TEXT,
    finished_at   TEXT
);
CREATE INDEX IF NOT EXISTS calculations_material ON calculations (material_id);
CREATE INDEX IF NOT EXISTS calculations_state ON calculations (state);

CREATE TABLE IF NOT EXISTS properties (
    material_id    TEXT NOT NULL,
    name           TEXT NOT NULL,
    value,
    unit           TEXT,
    calculation_id TEXT NOT NULL,
    source_seq     INTEGER NOT NULL, -- the PropertiesExtracted event it came from
    PRIMARY KEY (material_id, calculation_id, name)
);

CREATE TABLE IF NOT EXISTS errors (
    material_id    TEXT NOT NULL,
    calculation_id TEXT NOT NULL,
    kind           TEXT NOT NULL,
    evidence       TEXT
);
CREATE INDEX IF NOT EXISTS errors_material ON errors (material_id);

-- The last log seq applied, written in the same transaction as the rows above.
CREATE TABLE IF NOT EXISTS projection_state (
    name      TEXT PRIMARY KEY,
    last_seq  INTEGER NOT NULL,
    log_path  TEXT
);
