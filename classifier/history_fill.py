"""Realistic history rows in bulk, for measuring the history at scale (`manage.py
fill_history`): what a month of a public service leaves in the table, without running
the model a million times.

Each row looks like one the service writes (classifier/history.py): a 160 px JPEG
thumbnail of ~6 kB (a pool of textured pictures, as photos' thumbnails weigh), a top-5 of
the served classes with popular classes far more frequent (Zipf), a 7x7 activation map,
a SHA-256, a camera-like filename, phone-photo sizes, timings, the model's name and
version, stored features (2048 float16 of noise: as incompressible as real ones) and, for
a share of rows, feedback. Rows are spread evenly over the last `days` days, in time
order (ids grow with time, as they do). PostgreSQL gets them by binary COPY; other
databases by bulk inserts.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from django.db import connection, transaction
from django.utils import timezone
from PIL import Image

from . import partitions
from .features import COUNT as FEATURE_COUNT
from .models import Prediction

# Distinct thumbnails the rows share (each ~6 kB, as a photo's 160 px JPEG weighs).
THUMBNAILS = 256
ROWS_PER_BATCH = 5000
SOURCES = [
    (Prediction.Source.API, 0.6),
    (Prediction.Source.WEB, 0.3),
    (Prediction.Source.V2, 0.08),
    (Prediction.Source.V1, 0.02),
]
SIZES = [(4032, 3024), (3024, 4032), (1024, 768), (1920, 1080), (640, 480), (800, 600)]
FILENAME_PREFIXES = ["IMG_", "PXL_", "DSC", "photo-", "image-", "Screenshot_"]


@dataclass(frozen=True)
class Plan:
    rows: int
    days: float
    feedback_share: float = 0.02
    features: bool = True
    seed: int = 1


def thumbnails(count: int, seed: int) -> list[bytes]:
    """`count` textured 160x120 JPEGs at the service's thumbnail quality, ~6 kB each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:120, 0:160].astype(np.float32)
    pool = []
    for _ in range(count):
        period = rng.uniform(4, 12, size=2)
        base = np.stack(
            [
                128 + 90 * np.sin(xx / period[0] + phase) * np.cos(yy / period[1])
                for phase in rng.uniform(0, 6.3, size=3)
            ],
            axis=-1,
        )
        pixels = np.clip(base + rng.normal(0, 14, base.shape), 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(out, "JPEG", quality=80)
        pool.append(out.getvalue())
    return pool


def rows(plan: Plan, labels: list[tuple[str, str]], model: dict) -> Iterator[list[tuple]]:
    """Batches of rows as tuples in COLUMNS order. `labels`: (name, wnid) in output
    order; `model`: model_name, model_version, weights, engine, precision."""
    rng = np.random.default_rng(plan.seed)
    pool = thumbnails(THUMBNAILS, plan.seed)
    now = timezone.now()
    start = now - datetime.timedelta(days=plan.days)
    span = (now - start).total_seconds()
    # Zipf-like popularity: a few classes come up often, most rarely.
    weights = 1 / np.arange(1, len(labels) + 1) ** 1.1
    order = rng.permutation(len(labels))
    popularity = np.empty(len(labels))
    popularity[order] = weights / weights.sum()
    sources, source_p = zip(*SOURCES, strict=True)
    made = 0
    while made < plan.rows:
        n = min(ROWS_PER_BATCH, plan.rows - made)
        offsets = np.sort(rng.uniform(made / plan.rows, (made + n) / plan.rows, n)) * span
        tops = rng.choice(len(labels), size=(n, 5), p=popularity)
        top_p = np.sort(rng.dirichlet(np.full(6, 0.6), size=n)[:, :5], axis=1)[:, ::-1]
        source_of = rng.choice(len(sources), size=n, p=source_p)
        said = rng.random(n) < plan.feedback_share
        batch = []
        for i in range(n):
            created = start + datetime.timedelta(seconds=float(offsets[i]))
            indices = list(dict.fromkeys(int(t) for t in tops[i]))  # distinct, in order
            while len(indices) < 5:  # a popular class drawn twice: another in its place
                extra = int(rng.integers(len(labels)))
                if extra not in indices:
                    indices.append(extra)
            top_k = [
                {
                    "label": labels[index][0],
                    "probability": round(float(p), 6),
                    **({"wnid": labels[index][1]} if labels[index][1] else {}),
                    "index": index,
                }
                for index, p in zip(indices, top_p[i], strict=False)
            ]
            width, height = SIZES[int(rng.integers(len(SIZES)))]
            feedback, corrected, feedback_at = "", "", None
            if said[i]:
                kind = rng.random()
                if kind < 0.6:
                    feedback, corrected = Prediction.Feedback.CONFIRMED, top_k[0]["label"]
                elif kind < 0.9:
                    feedback = Prediction.Feedback.CORRECTED
                    corrected = labels[int(rng.choice(len(labels), p=popularity))][0]
                else:
                    feedback = Prediction.Feedback.NONE
                feedback_at = created + datetime.timedelta(seconds=float(rng.uniform(5, 120)))
            prefix = FILENAME_PREFIXES[int(rng.integers(len(FILENAME_PREFIXES)))]
            inference = float(rng.uniform(18, 600))
            batch.append(
                (
                    created,
                    sources[source_of[i]],
                    f"{prefix}{created:%Y%m%d}_{int(rng.integers(10**6)):06d}.jpg",
                    secrets.token_hex(32),
                    width,
                    height,
                    "JPEG",
                    pool[int(rng.integers(len(pool)))],
                    top_k,
                    top_k[0]["label"],
                    top_k[0]["probability"],
                    np.round(rng.random((7, 7)), 3).tolist(),
                    round(inference, 2),
                    round(inference + float(rng.uniform(5, 60)), 2),
                    model["model_name"],
                    model["model_version"],
                    model["weights"],
                    model["engine"],
                    model["precision"],
                    feedback,
                    corrected,
                    feedback_at,
                    rng.standard_normal(FEATURE_COUNT).astype("<f2").tobytes()
                    if plan.features
                    else None,
                )
            )
        made += n
        yield batch


COLUMNS = [
    "created_at", "source", "filename", "sha256", "width", "height", "image_format",
    "thumbnail", "top_k", "top_label", "top_probability", "activation_map", "inference_ms",
    "total_ms", "model_name", "model_version", "weights", "engine", "precision", "feedback",
    "corrected_label", "feedback_at", "features",
]  # fmt: skip
# PostgreSQL's types of COLUMNS, for binary COPY.
_PG_TYPES = [
    "timestamptz", "varchar", "varchar", "varchar", "int4", "int4", "varchar", "bytea",
    "jsonb", "varchar", "float8", "jsonb", "float8", "float8", "varchar", "varchar",
    "varchar", "varchar", "varchar", "varchar", "varchar", "timestamptz", "bytea",
]  # fmt: skip


def _insert(table: str, batch: list[tuple]) -> None:
    """Plain INSERTs (bulk_create would stamp created_at with now: auto_now_add)."""
    ops = connection.ops
    dated = {COLUMNS.index("created_at"), COLUMNS.index("feedback_at")}
    as_json = {COLUMNS.index("top_k"), COLUMNS.index("activation_map")}

    def adapt(i: int, value):
        if i in dated:
            return ops.adapt_datetimefield_value(value)
        return json.dumps(value) if i in as_json else value

    # Names from the model and this module only, never from input.
    columns, marks = ", ".join(COLUMNS), ", ".join(["%s"] * len(COLUMNS))
    sql = f"INSERT INTO {table} ({columns}) VALUES ({marks})"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.executemany(sql, [[adapt(i, v) for i, v in enumerate(row)] for row in batch])


def fill(
    plan: Plan,
    labels: list[tuple[str, str]],
    model: dict,
    progress: Callable[[int], None] | None = None,
) -> float:
    """Write the plan's rows; seconds taken."""
    started = time.perf_counter()
    table = Prediction._meta.db_table
    if partitions.active():
        # Each day of the plan in a partition of its own, as retention expects.
        first = (timezone.now() - datetime.timedelta(days=plan.days)).astimezone(datetime.UTC)
        partitions.ensure(first.date(), math.ceil(plan.days) + 2)
    for batch in rows(plan, labels, model):
        with transaction.atomic():
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    raw = cursor.cursor  # psycopg's own cursor, under Django's wrapper
                    columns = ", ".join(COLUMNS)
                    statement = f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)"
                    with raw.copy(statement) as copy:
                        copy.set_types(_PG_TYPES)
                        for row in batch:
                            copy.write_row(row)
            else:
                _insert(table, batch)
        if progress is not None:
            progress(len(batch))
    return time.perf_counter() - started
