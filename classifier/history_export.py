"""The admin's CSV export of the history, streamed: constant memory whatever the number
of rows, and no long transaction or held cursor.

Rows are read in pages of CHUNK by keyset (`pk < last`, newest first): each page is one
short query on the primary key's index, so the export holds no snapshot open while a
slow client downloads it, and a page's cost does not grow with how far it has gone
(OFFSET would). Each page is written to CSV and handed on as bytes before the next is
read. Thumbnails and features are never read.

Cells that a spreadsheet would read as a formula get a leading apostrophe (OWASP), and
every cell is quoted.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterator

from django.db.models import QuerySet

CHUNK = 2000
# When the model served while a piece was being made, the export waits this many times as
# long as the piece took before making the next: a busy process gives it at most a
# quarter of its time (its Python holds the GIL and a core the serving needs). Idle, it
# runs at full speed.
BUSY_PAUSE = 3.0

COLUMNS = [
    "id", "created_at", "source", "filename", "top_label", "top_probability", "top_k",
    "width", "height", "image_format", "sha256", "model_name", "model_version", "weights",
    "engine", "precision", "inference_ms", "total_ms", "feedback", "corrected_label",
    "feedback_at",
]  # fmt: skip

# A spreadsheet reads a cell that starts with one of these as a formula (CSV injection):
# such text cells get a leading apostrophe, as OWASP recommends. (defusedcsv covers the
# first four but not tab and carriage return.)
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """`value` for a CSV cell an operator opens in a spreadsheet: text that would start a
    formula gets a leading apostrophe (shown, not run); numbers and dates stay as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def _cell(column: str, value):
    if column == "top_k":
        value = ";".join(f"{s['label']}:{s['probability']:.6f}" for s in value)
    return spreadsheet_safe(value)


def csv_chunks(
    queryset: QuerySet, activity: Callable[[], tuple[int, int]] | None = None
) -> Iterator[bytes]:
    """The rows of `queryset` as UTF-8 CSV, a header then a piece per CHUNK rows, newest
    (highest id) first. `activity` (runtime.model_activity): paced as BUSY_PAUSE says."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL)  # every cell quoted, as OWASP says
    writer.writerow(COLUMNS)
    yield _take(buffer)
    rows = queryset.order_by("-pk").values_list(*COLUMNS)
    last = None
    while True:
        before = activity() if activity else None
        started = time.perf_counter()
        page = list((rows if last is None else rows.filter(pk__lt=last))[:CHUNK])
        if not page:
            return
        for row in page:
            writer.writerow([_cell(c, v) for c, v in zip(COLUMNS, row, strict=True)])
        last = page[-1][0]
        piece = _take(buffer)
        took = time.perf_counter() - started
        if activity is not None:
            passes, waiting = activity()
            if passes != before[0] or waiting:
                time.sleep(BUSY_PAUSE * took)
        yield piece


def _take(buffer: io.StringIO) -> bytes:
    data = buffer.getvalue().encode()
    buffer.seek(0)
    buffer.truncate()
    return data
