"""Daily partitions of the prediction history on PostgreSQL.

The history table is range-partitioned on `created_at`, one partition a day (UTC), so
retention drops a whole day with `DROP TABLE`: its disk goes back to the operating
system at once, with no row-by-row delete, no vacuum and no bloat, in milliseconds
whatever the day's size. A default partition takes rows for any day without a
partition of its own (retention never ran, a clock far off), so an insert never fails
for want of a partition.

A history that existed before partitioning is kept as one partition, `..._before`,
attached without copying a row (its bound checked beforehand by a validated CHECK, so
the attach scans nothing); retention deletes its old rows in batches until all of it is
older than the retention, then drops it like a day.

Every DDL statement waits at most LOCK_TIMEOUT for its lock: a DDL statement queued
behind a long query would otherwise hold up every insert queued behind it. On a timeout
it is tried again, up to ATTEMPTS times.

Only PostgreSQL partitions; SQLite (the laptop default) keeps one table and deletes in
batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.db import OperationalError, connection, transaction

TABLE = "classifier_prediction"  # Prediction._meta.db_table
DEFAULT = f"{TABLE}_default"
BEFORE = f"{TABLE}_before"
AHEAD = 7  # days of partitions made ahead of today
LOCK_TIMEOUT = "2s"
ATTEMPTS = 10
LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True)
class Partition:
    name: str
    lower: datetime | None  # None: from the beginning of time (MINVALUE)
    upper: datetime | None  # None: the default partition
    default: bool = False

    def overlaps(self, lower: datetime, upper: datetime) -> bool:
        if self.default:
            return False
        return (self.lower is None or self.lower < upper) and (
            self.upper is None or lower < self.upper
        )


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def day_name(day: date) -> str:
    return f"{TABLE}_p{day:%Y%m%d}"


def active(using=None) -> bool:
    """Whether the history is partitioned (PostgreSQL, after migration 0013)."""
    conn = using or connection
    if conn.vendor != "postgresql":
        return False
    with conn.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
        row = cursor.fetchone()
    return bool(row) and row[0] == "p"


def partitions(using=None) -> list[Partition]:
    """The history's partitions, oldest first, the default last."""
    conn = using or connection
    with conn.cursor() as cursor:
        cursor.execute(
            r"""
            SELECT c.relname,
                   pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT',
                   (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                 'FROM \(''([^'']+)''\)'))[1]::timestamptz,
                   (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                 'TO \(''([^'']+)''\)'))[1]::timestamptz
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = %s::regclass
            """,
            [TABLE],
        )
        found = [Partition(name, lower, upper, default) for name, default, lower, upper in cursor]
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(found, key=lambda p: (p.default, p.lower or epoch, p.name))


def _ddl(statements: list[str], using=None) -> None:
    """Run statements in one transaction, each lock waited for at most LOCK_TIMEOUT."""
    conn = using or connection
    for attempt in range(ATTEMPTS):
        try:
            with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                for statement in statements:
                    cursor.execute(statement)
            return
        except OperationalError as error:
            if getattr(error.__cause__, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            if attempt == ATTEMPTS - 1:
                raise
            time.sleep(1 + attempt)


def _literal(moment: datetime) -> str:
    return f"'{moment.isoformat()}'"


def _count(cursor, table: str, where: str = "", params=()) -> int:
    cursor.execute(f"SELECT count(*) FROM {table} {where}", params)  # noqa: S608 (own tables)
    return cursor.fetchone()[0]


@dataclass
class Ensured:
    created: list[str]
    # Days left to the default partition because it already holds rows of that day.
    skipped: list[date]


def ensure(first: date, days: int, using=None) -> Ensured:
    """Make sure each day from `first` on, `days` days, has a partition."""
    conn = using or connection
    result = Ensured([], [])
    existing = partitions(conn)
    has_default = any(p.default for p in existing)
    for offset in range(days):
        day = first + timedelta(days=offset)
        lower, upper = day_bounds(day)
        if any(p.overlaps(lower, upper) for p in existing):
            continue
        if has_default:
            with conn.cursor() as cursor:
                cursor.execute(
                    f"SELECT EXISTS (SELECT 1 FROM {DEFAULT} "  # noqa: S608 (own table)
                    "WHERE created_at >= %s AND created_at < %s)",
                    [lower, upper],
                )
                if cursor.fetchone()[0]:
                    result.skipped.append(day)
                    continue
        name = day_name(day)
        # CREATE then ATTACH: ATTACH locks the parent only against other DDL (SHARE
        # UPDATE EXCLUSIVE), where CREATE ... PARTITION OF would block its inserts.
        _ddl(
            [
                f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS "
                "INCLUDING CONSTRAINTS INCLUDING STORAGE)",
                f"ALTER TABLE {TABLE} ATTACH PARTITION {name} "
                f"FOR VALUES FROM ({_literal(lower)}) TO ({_literal(upper)})",
            ],
            conn,
        )
        result.created.append(name)
        existing.append(Partition(name, lower, upper))
    return result


def ensure_ahead(now: datetime | None = None, using=None) -> Ensured:
    """Partitions for today and the next AHEAD days (UTC)."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    return ensure(today, AHEAD + 1, using)


def expired(cutoff: datetime, using=None) -> list[Partition]:
    """Partitions whose every row is older than cutoff."""
    return [
        p for p in partitions(using) if not p.default and p.upper is not None and p.upper <= cutoff
    ]


def drop(partition: Partition, using=None) -> int:
    """Drop one partition; how many rows it held.

    Detached first, then dropped in a transaction of its own: unlinking a day's files
    (hundreds of MB) takes up to a second, and with the partition still attached the
    parent would stay locked against inserts until the files were gone."""
    conn = using or connection
    with conn.cursor() as cursor:
        rows = _count(cursor, partition.name)
    _ddl([f"ALTER TABLE {TABLE} DETACH PARTITION {partition.name}"], conn)
    _ddl([f"DROP TABLE {partition.name}"], conn)
    return rows


def detached(using=None) -> list[str]:
    """Day tables detached but not dropped (a retention run stopped between the two)."""
    conn = using or connection
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND NOT relispartition "
            "AND relnamespace = current_schema()::regnamespace AND relname ~ %s",
            [f"^{TABLE}_p[0-9]{{8}}$"],
        )
        return sorted(name for (name,) in cursor.fetchall())


def drop_detached(name: str, using=None) -> None:
    _ddl([f"DROP TABLE {name}"], using or connection)


def default_rows(using=None) -> int:
    conn = using or connection
    with conn.cursor() as cursor:
        return _count(cursor, DEFAULT)


def convert(using=None, now: datetime | None = None) -> None:
    """Turn the plain history table into a partitioned one (migration 0013).

    An empty table is replaced; a table with rows becomes the `..._before` partition,
    attached without copying (the bound's CHECK is validated first, beside the writes,
    which it does not block) and with its indexes adopted by the new table's, so the
    table is locked only for the swap itself. Ids continue from the old sequence, so an
    id (and its feedback token) is never given out twice.
    """
    conn = using or connection
    if active(conn):
        return
    now = (now or datetime.now(UTC)).astimezone(UTC)
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {TABLE})")  # noqa: S608 (own table)
        keep = cursor.fetchone()[0]
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema() AND tablename = %s "
            "AND indexname NOT IN (%s, %s)",
            [TABLE, f"{TABLE}_pkey", f"{BEFORE}_pkey"],
        )
        indexes = cursor.fetchall()
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [TABLE])
        (sequence,) = cursor.fetchone()

    # Rows already there stay in `..._before`, up to the start of the day after tomorrow
    # (a bound no row being written during the migration can pass).
    boundary = day_bounds(now.date() + timedelta(days=2))[0]
    old = BEFORE if keep else f"{TABLE}_unpartitioned"
    if keep:
        # Each step may be run again after a migration that stopped half way: an index
        # left invalid by a failed CONCURRENTLY build is made again, the bound replaced.
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)",
                [f"{BEFORE}_pkey"],
            )
            invalid = cursor.fetchone()
            if invalid and invalid[0]:
                cursor.execute(f"DROP INDEX CONCURRENTLY {BEFORE}_pkey")
            cursor.execute(
                f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {BEFORE}_pkey "
                f"ON {TABLE} (id, created_at)"
            )
        _ddl(
            [
                f"ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS {BEFORE}_bound",
                f"ALTER TABLE {TABLE} ADD CONSTRAINT {BEFORE}_bound "
                f"CHECK (created_at < {_literal(boundary)}) NOT VALID",
            ],
            conn,
        )
        with conn.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT {BEFORE}_bound")

    swap = [f"ALTER INDEX {name} RENAME TO {(name + '_old')[:63]}" for name, _ in indexes]
    swap += [
        "CREATE TEMP TABLE history_sequence ON COMMIT DROP AS "  # noqa: S608 (own sequence)
        f"SELECT last_value, is_called FROM {sequence}",
        f"ALTER TABLE {TABLE} RENAME TO {old}",
        f"ALTER TABLE {old} ALTER COLUMN id DROP IDENTITY",
        f"CREATE TABLE {TABLE} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        "INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY RANGE (created_at)",
        f"ALTER TABLE {TABLE} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY",
        f"SELECT setval(pg_get_serial_sequence('{TABLE}', 'id'), last_value, is_called) "  # noqa: S608
        "FROM history_sequence",
    ]
    if keep:
        swap += [
            f"ALTER TABLE {TABLE} DROP CONSTRAINT {BEFORE}_bound",
            f"ALTER TABLE {old} DROP CONSTRAINT {TABLE}_pkey",
            f"ALTER TABLE {old} ADD CONSTRAINT {BEFORE}_pkey PRIMARY KEY USING INDEX {BEFORE}_pkey",
            f"ALTER TABLE {TABLE} ATTACH PARTITION {old} "
            f"FOR VALUES FROM (MINVALUE) TO ({_literal(boundary)})",
            f"ALTER TABLE {old} DROP CONSTRAINT {BEFORE}_bound",
        ]
    else:
        swap.append(f"DROP TABLE {old}")
    # On the partitioned table each index adopts the old table's equal index (no build).
    swap.append(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (id, created_at)")
    swap += [definition for _, definition in indexes]
    swap.append(f"CREATE TABLE {DEFAULT} PARTITION OF {TABLE} DEFAULT")
    _ddl(swap, conn)
    ensure((boundary if keep else now).date(), AHEAD + 1, conn)
