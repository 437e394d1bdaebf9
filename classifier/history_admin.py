"""What keeps the history's admin list fast at millions of rows: every part of a list
page costs the same at 1,000 rows as at 1,000,000.

- `HistoryPaginator`: the unfiltered list's size is PostgreSQL's estimate (pg_class), not
  a COUNT(*) of the table; a filtered list is counted up to COUNT_LIMIT rows at most.
- `ModelFilter`: the model versions that answered, found by a loose index scan on
  (model_name, model_version) on PostgreSQL (one index probe per version), not a
  DISTINCT over the table.
- Searches use trigram indexes on PostgreSQL (migration 0010), and dates a filter that
  needs no query (no date hierarchy, whose MIN/MAX and DISTINCT month scans grow with
  the table).
"""

from __future__ import annotations

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connection
from django.utils.functional import cached_property

from .models import Prediction

# A filtered list is counted up to this many rows ("10000 results": that many or more).
COUNT_LIMIT = 10_000
# Below this many rows the table is counted exactly, estimate or not.
ESTIMATE_FROM = 100_000


class HistoryPaginator(Paginator):
    @cached_property
    def count(self) -> int:
        query = self.object_list.query
        if not query.where:
            estimate = estimated_rows()
            if estimate >= ESTIMATE_FROM:
                return estimate
            return self.object_list.count()
        return self.object_list.order_by()[:COUNT_LIMIT].count()


def estimated_rows() -> int:
    """PostgreSQL's estimate of the history's rows (kept by autovacuum and ANALYZE);
    -1 elsewhere or before the table was ever analysed."""
    if connection.vendor != "postgresql":
        return -1
    # A partitioned table's own estimate is -1: its partitions' estimates add up (those
    # never analysed yet, -1, left out).
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT COALESCE(SUM(c.reltuples) FILTER (WHERE c.reltuples >= 0), -1)::bigint
            FROM pg_class c
            WHERE c.oid = %(table)s::regclass AND c.relkind <> 'p'
               OR c.oid IN (SELECT inhrelid FROM pg_inherits
                            WHERE inhparent = %(table)s::regclass)
            """,
            {"table": Prediction._meta.db_table},
        )
        row = cursor.fetchone()
    return int(row[0]) if row else -1


def model_versions() -> list[tuple[str, str]]:
    """(model name, version) of every model that answered, in order."""
    table = Prediction._meta.db_table
    if connection.vendor == "postgresql":
        # A loose index scan: each step jumps to the next (name, version) in the index.
        sql = f"""
            WITH RECURSIVE versions AS (
                (SELECT model_name, model_version FROM {table}
                 ORDER BY model_name, model_version LIMIT 1)
                UNION ALL
                SELECT following.model_name, following.model_version
                FROM versions, LATERAL (
                    SELECT model_name, model_version FROM {table}
                    WHERE (model_name, model_version)
                        > (versions.model_name, versions.model_version)
                    ORDER BY model_name, model_version LIMIT 1
                ) AS following
            )
            SELECT model_name, model_version FROM versions
        """  # noqa: S608 (the model's own table name)
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return [tuple(row) for row in cursor.fetchall()]
    return [
        tuple(row)
        for row in Prediction.objects.values_list("model_name", "model_version")
        .distinct()
        .order_by("model_name", "model_version")
    ]


class ModelFilter(admin.SimpleListFilter):
    """By the model version that answered: `model=<name> <version>`."""

    title = "model"
    parameter_name = "model"

    def lookups(self, request, model_admin):
        return [(f"{name}\t{version}", f"{name} {version}") for name, version in model_versions()]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        name, _, version = self.value().partition("\t")
        return queryset.filter(model_name=name, model_version=version)
