"""CSV import of customers and events (management commands and the upload page).

- Columns are mapped by header (case and spacing do not matter; common aliases are known).
  Customer columns the model does not have become attributes; event columns it does not have
  become properties. ``attributes.<key>`` / ``properties.<key>`` name them explicitly.
- UTF-8 with or without BOM; the delimiter (comma, semicolon, tab or pipe) is sniffed.
- Bad rows are reported by line number, column and reason and are not imported; good rows
  are, in chunks through the same services as the API (COPY on PostgreSQL).
- Re-importing the same file changes nothing: customers are upserted (identical rows are
  "unchanged"), and an event without an ``event_id`` (no column, or a blank cell) gets one
  derived from its content (``ContentEventIds``), so the same event is recognised as a
  duplicate from any file: the same file again, re-saved, or with rejected lines fixed.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import msgspec
from django.utils import timezone

from abtest.errors import ServiceError
from abtest.models import JobStatus
from abtest.prefetch import cyclic_gc_paused, prefetched, short_gil_slices
from segmentation.models import ImportJob, ImportKind
from segmentation.services.bulk import analyze_if_stale
from segmentation.services.customers import UpsertResult, customers_upsert
from segmentation.services.events import IngestResult, events_ingest
from segmentation.services.validation import (
    EventRow,
    RowError,
    RowInvalid,
    clean_customer,
    clean_event,
)

CHUNK_ROWS = 100_000
#: The first chunk is smaller, so that the database starts writing (and the progress bar
#: moving) after a tenth of a second rather than after a whole chunk has been parsed: the
#: database otherwise idles for that long (0.9 s of a 17 s import of 1M customers here).
FIRST_CHUNK_ROWS = 10_000
#: How many rejected rows an import keeps for display (the count is always exact).
MAX_KEPT_ERRORS = 1_000

CUSTOMER_COLUMNS = {
    "external_id": "external_id",
    "id": "external_id",
    "customer_id": "external_id",
    "email": "email",
    "email_address": "email",
    "first_name": "first_name",
    "firstname": "first_name",
    "given_name": "first_name",
    "last_name": "last_name",
    "lastname": "last_name",
    "surname": "last_name",
    "family_name": "last_name",
    "locale": "locale",
    "language": "locale",
    "time_zone": "time_zone",
    "timezone": "time_zone",
    "tz": "time_zone",
    "subscription_status": "subscription_status",
    "status": "subscription_status",
    "attributes": "attributes",
}
EVENT_COLUMNS = {
    "customer": "customer",
    "external_id": "customer",
    "customer_id": "customer",
    "customer_external_id": "customer",
    "type": "type",
    "event": "type",
    "event_type": "type",
    "occurred_at": "occurred_at",
    "timestamp": "occurred_at",
    "time": "occurred_at",
    "date": "occurred_at",
    "value": "value",
    "amount": "value",
    "revenue": "value",
    "properties": "properties",
    "event_id": "event_id",
    "source": "source",
}
REQUIRED = {
    ImportKind.CUSTOMERS: ("external_id",),
    ImportKind.EVENTS: ("customer", "type", "occurred_at"),
}


class CsvError(ServiceError):
    """The file as a whole cannot be imported (not CSV, not UTF-8, missing columns...)."""


@dataclass
class ImportResult:
    kind: str
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: list[RowError] = field(default_factory=list)  # the first ``max_kept_errors``
    max_kept_errors: int = MAX_KEPT_ERRORS

    def keep(self, errors: list[RowError]) -> None:
        self.rejected += len(errors)
        room = self.max_kept_errors - len(self.errors)
        if room > 0:
            self.errors.extend(errors[:room])


# --- reading ----------------------------------------------------------------------------------

_HEADER_CLEAN = re.compile(r"[\s\-]+")


def _normalise(header: str) -> str:
    return _HEADER_CLEAN.sub("_", header.strip().lower())


Source = bytes | str | Path | IO[bytes]

#: Bytes read at a time when scanning a file.
_BLOCK = 1 << 20
#: The start of the file that is sniffed for the delimiter and checked for binary data.
_SAMPLE = 65536


@dataclass
class CsvFile:
    """An opened, sniffed CSV: its mapped columns and an iterator of (line, values).

    Nothing is held in memory but the current row: the file is scanned once when opened
    (row count, UTF-8 check) and read again, streaming, as ``rows`` is iterated.
    """

    columns: list[tuple[str, str | None]]  # (target kind, target name) per column
    headers: list[str]
    rows: Iterator[tuple[int, list[str]]]
    total_rows: int


@dataclass
class _Scan:
    newlines: int
    ends_with_newline: bool
    sample: str  # the decoded start of the file
    has_text: bool  # anything but whitespace


def _binary(source: Source) -> tuple[IO[bytes], bool]:
    """A seekable binary stream for ``source`` and whether this module opened it (and so must
    close it); a caller's stream is left open for the caller."""
    if isinstance(source, (str, Path)):
        return open(source, "rb"), True
    if isinstance(source, bytes):
        return io.BytesIO(source), True
    return source, False


def _scan(stream: IO[bytes]) -> _Scan:
    """One pass over the bytes: newline count, UTF-8 validity, the sample to sniff."""
    stream.seek(0)
    decoder = codecs.getincrementaldecoder("utf-8")()
    newlines, offset, sample, has_text, last = 0, 0, "", False, b""
    while block := stream.read(_BLOCK):
        if offset == 0 and b"\x00" in block[:_SAMPLE]:
            if block.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
                raise CsvError(
                    'The file is UTF-16 text (Excel\'s "Unicode Text"); save it as UTF-8 CSV.',
                    field="file",
                )
            raise CsvError("This is not a CSV file (it contains binary data).", field="file")
        newlines += block.count(b"\n")
        try:
            text = decoder.decode(block)
        except UnicodeDecodeError as error:
            raise CsvError(
                f"The file is not UTF-8 text (byte {offset + error.start}); save it as UTF-8 CSV.",
                field="file",
            ) from None
        if len(sample) < _SAMPLE:
            sample += text[: _SAMPLE - len(sample)]
        has_text = has_text or bool(text.lstrip("\ufeff").strip())
        offset += len(block)
        last = block[-1:]
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise CsvError(
            f"The file is not UTF-8 text (it ends inside a character, byte {offset}); "
            "save it as UTF-8 CSV.",
            field="file",
        ) from None
    return _Scan(
        newlines=newlines,
        ends_with_newline=last == b"\n",
        sample=sample.removeprefix("\ufeff"),
        has_text=has_text,
    )


_DELIMITERS = ",;\t|"


class _Dialect(csv.excel):
    """Double quotes, as every spreadsheet writes them; only the delimiter varies."""


def csv_dialect(sample: str) -> type[csv.Dialect]:
    """The dialect: the delimiter that splits the header line into the most fields (ties in
    the order comma, semicolon, tab, pipe; a header of one name is one column). Only the
    delimiter is guessed: ``csv.Sniffer`` also guesses the quote character, took apostrophes
    in names (O'Neil, 't Hooft) for quotes and merged rows, and refused small files with one
    short row."""
    header = sample.split("\n", 1)[0].rstrip("\r")
    best, most = ",", 1
    for delimiter in _DELIMITERS:
        fields = len(next(csv.reader([header], delimiter=delimiter), []))
        if fields > most:
            best, most = delimiter, fields
    return type("_Dialect", (_Dialect,), {"delimiter": best})


def csv_open(source: Source, *, kind: str) -> CsvFile:
    """Check a CSV file and map its columns; raise ``CsvError`` if it cannot be imported at
    all. ``source``: a path, the bytes, or a seekable binary stream (left open)."""
    stream, owned = _binary(source)
    try:
        scan = _scan(stream)
    except BaseException:
        if owned:
            stream.close()
        raise
    if owned:
        stream.close()
    else:
        stream.seek(0)
    if not scan.has_text:
        raise CsvError("The file is empty.", field="file")
    dialect = csv_dialect(scan.sample)
    try:
        headers = next(csv.reader(io.StringIO(scan.sample, newline=""), dialect))
    except (csv.Error, StopIteration) as error:
        raise CsvError(f"This is not a valid CSV file: {error}.", field="file") from None
    columns = _map_columns(headers, kind=kind)
    return CsvFile(
        columns=columns,
        headers=headers,
        rows=_numbered(source, dialect),
        total_rows=max(0, scan.newlines + (0 if scan.ends_with_newline else 1) - 1),
    )


class _BlockReader(io.RawIOBase):
    """Reads any binary stream 1 MB at a time, however little is asked of it.

    The CSV is parsed on a thread of its own, and every read() of a file releases the GIL for
    a syscall, handing it to the database thread for up to the switch interval. The text layer
    asks for 8 KB at a time: 13,000 handovers per 100 MB made a 1M-row re-import 40% slower
    than parsing the same bytes from memory; with 1 MB reads there are 100, and no difference.
    """

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        self.block = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self.block:
            self.block = memoryview(self.stream.read(_BLOCK))
        size = min(len(buffer), len(self.block))
        buffer[:size] = self.block[:size]
        self.block = self.block[size:]
        return size


def _numbered(source: Source, dialect) -> Iterator[tuple[int, list[str]]]:
    """Yield (first line number of the row, values) after the header; blank lines are
    skipped. Streams the file; a caller's stream is left open (and rewound) at the end."""
    stream, owned = _binary(source)
    stream.seek(0)
    text = io.TextIOWrapper(
        io.BufferedReader(_BlockReader(stream), buffer_size=_BLOCK),
        encoding="utf-8-sig",
        newline="",
    )
    try:
        reader = csv.reader(text, dialect)
        next(reader, None)  # the header
        line = reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                yield line, [f"\x00{error}"]
                line = reader.line_num + 1
                continue
            if values and (values[0].strip() or "".join(values).strip()):
                yield line, values
            line = reader.line_num + 1
    finally:
        text.close()  # closes the wrappers, not the stream
        if owned:
            stream.close()
        elif not stream.closed:  # an abandoned import may be finalized after its upload
            stream.seek(0)


def _map_columns(headers: list[str], *, kind: str) -> list[tuple[str, str | None]]:
    known = CUSTOMER_COLUMNS if kind == ImportKind.CUSTOMERS else EVENT_COLUMNS
    extra_kind = "attribute" if kind == ImportKind.CUSTOMERS else "property"
    prefixes = (
        ("attributes.", "attribute.")
        if kind == ImportKind.CUSTOMERS
        else (
            "properties.",
            "property.",
        )
    )
    columns: list[tuple[str, str | None]] = []
    seen: dict[str, str] = {}
    for header in headers:
        name = _normalise(header)
        if not name:
            columns.append(("ignore", None))
            continue
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix:
            target = ("extra", header.strip()[len(prefix) :].strip())
        elif name in known:
            target = ("field", known[name])
        else:
            target = ("extra", header.strip())
        key = f"{target[0]}:{target[1]}"
        if key in seen:
            raise CsvError(
                f"Columns {seen[key]!r} and {header!r} both map to "
                f"{target[1] if target[0] == 'field' else extra_kind + ' ' + repr(target[1])}.",
                field="file",
            )
        seen[key] = header
        columns.append(target)
    present = {name for what, name in columns if what == "field"}
    missing = [name for name in REQUIRED[kind] if name not in present]
    if missing:
        raise CsvError(
            f"Missing column{'s' if len(missing) > 1 else ''}: {', '.join(missing)} "
            f"(found: {', '.join(h for h in headers if h.strip()) or 'none'}).",
            field="file",
        )
    return columns


_BOOLEANS = {"true": True, "TRUE": True, "True": True, "false": False, "FALSE": False}
_BOOLEANS["False"] = False
_NUMBER_START = frozenset("-0123456789")


def _infer(value: str) -> Any:
    """CSV cells are text (never empty here); keep numbers and booleans that round-trip
    exactly as such. Runs per cell: the common case, a word, fails the first test."""
    boolean = _BOOLEANS.get(value)
    if boolean is not None:
        return boolean
    # isdigit() is also true of superscripts and other digits that int() refuses.
    if (
        value[0] in _NUMBER_START
        and value.isascii()
        and value.lstrip("-").isdigit()
        and str(int(value)) == value
    ):
        return int(value)
    return value


_json_object = msgspec.json.Decoder(dict[str, Any])


class _RowMapper:
    """Turns a row's cells into the ``{field: value}`` a cleaner takes, with the column
    mapping worked out once per file: model fields by name, other columns into
    ``extra_field`` (typed by ``_infer``), merged over that field's own JSON column if the file
    has one (columns win over its keys). Runs per row: kept to comprehensions."""

    def __init__(self, columns: list[tuple[str, str | None]], *, extra_field: str):
        self.width = len(columns)
        self.extra_field = extra_field
        self.fields = [
            (i, name)
            for i, (what, name) in enumerate(columns)
            if what == "field" and name != extra_field
        ]
        self.extras = [(i, name) for i, (what, name) in enumerate(columns) if what == "extra"]
        # Extra columns (plan, city, age) repeat a few values: typed once each per file.
        self.infer = lru_cache(maxsize=100_000)(_infer)
        self.json = next(
            (
                i
                for i, (what, name) in enumerate(columns)
                if what == "field" and name == extra_field
            ),
            None,
        )

    def __call__(self, values: list[str]) -> dict[str, Any]:
        if values and values[0].startswith("\x00"):
            raise RowInvalid(None, f"Malformed CSV row: {values[0][1:]}.")
        if len(values) != self.width:
            raise RowInvalid(None, f"Expected {self.width} columns, found {len(values)}.")
        row = {name: values[i] for i, name in self.fields}
        infer = self.infer
        extra = {name: infer(value) for i, name in self.extras if (value := values[i].strip())}
        if self.json is not None and (text := values[self.json].strip()):
            try:
                extra = {**_json_object.decode(text), **extra}
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise RowInvalid(self.extra_field, "Must be a JSON object.") from None
        if extra:
            row[self.extra_field] = extra
        return row


# --- importing --------------------------------------------------------------------------------

Progress = Callable[[int, ImportResult], None]


def csv_import(
    source: Source,
    *,
    kind: str,
    create_customers: bool = False,
    progress: Progress | None = None,
    chunk_rows: int = CHUNK_ROWS,
    max_kept_errors: int = MAX_KEPT_ERRORS,
) -> ImportResult:
    """Import a customers or events CSV; see the module docstring for the rules.

    The result counts every rejected row and keeps the first ``max_kept_errors`` of them.
    """
    csv_file = csv_open(source, kind=kind)
    result = ImportResult(kind=kind, max_kept_errors=max_kept_errors)
    is_customers = kind == ImportKind.CUSTOMERS
    # Parsing and validating (pure Python) run up to two chunks ahead in a thread while the
    # database applies the current one.
    chunks = _parsed_chunks(csv_file, kind=kind, chunk_rows=chunk_rows)
    with short_gil_slices(), cyclic_gc_paused():
        _apply_chunks(prefetched(chunks, depth=2), result, is_customers, create_customers, progress)
    analyze_if_stale("segmentation_customer" if is_customers else "segmentation_event")
    return result


def _apply_chunks(
    chunks: Iterator[_ParsedChunk],
    result: ImportResult,
    is_customers: bool,
    create_customers: bool,
    progress: Progress | None,
) -> None:
    for parsed in chunks:
        result.rows += parsed.rows
        if is_customers:
            applied: UpsertResult = customers_upsert(rows=parsed.chunk)
            result.created += applied.created
            result.updated += applied.updated
            result.unchanged += applied.unchanged
            batch_errors = parsed.errors + applied.rejected
        else:
            ingested: IngestResult = events_ingest(
                rows=parsed.chunk, create_customers=create_customers
            )
            result.created += ingested.accepted
            result.duplicates += ingested.duplicates
            batch_errors = parsed.errors + ingested.rejected
        result.keep(sorted(batch_errors, key=lambda e: e.row))
        if progress is not None:
            progress(result.rows, result)


@dataclass
class _ParsedChunk:
    rows: int  # rows read, good and bad
    chunk: list  # (line, validated row)
    errors: list[RowError]


def _parsed_chunks(csv_file: CsvFile, *, kind: str, chunk_rows: int) -> Iterator[_ParsedChunk]:
    """Validated rows in chunks of ``chunk_rows`` (bad rows count towards a chunk). Always
    yields at least one chunk, so progress is reported even for a file without rows."""
    is_customers = kind == ImportKind.CUSTOMERS
    twins = ContentEventIds()
    row_values = _RowMapper(
        csv_file.columns, extra_field="attributes" if is_customers else "properties"
    )
    parsed = _ParsedChunk(0, [], [])
    limit = min(chunk_rows, FIRST_CHUNK_ROWS)
    for line, values in csv_file.rows:
        parsed.rows += 1
        try:
            if is_customers:
                row = clean_customer(row_values(values))
            else:
                row = clean_event(row_values(values))
                if row.event_id is None:
                    row = replace(row, event_id=twins.event_id(row))
            parsed.chunk.append((line, row))
        except RowInvalid as error:
            parsed.errors.append(
                RowError(line, _header_for(csv_file, error.column, kind), error.reason)
            )
        if parsed.rows >= limit:
            yield parsed
            parsed = _ParsedChunk(0, [], [])
            limit = chunk_rows
    if parsed.rows or not csv_file.total_rows:
        yield parsed


class ContentEventIds:
    """Event ids for a file's events that have none, derived from what each event is
    (customer, type, time, value, properties) and how many identical rows came before it in
    the file: importing the same events again, from the same file, a re-saved copy or one with
    rejected lines fixed, finds them as duplicates, while identical rows within one file stay
    distinct events (two purchases of the same thing in the same second).

    Holds one small integer per distinct row of the file (~60 MB per million rows) to count
    the identical ones.
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._repeats: dict[int, int] = {}

    def event_id(self, row: EventRow) -> str:
        content = msgspec.json.encode(
            [
                row.external_id,
                row.type,
                row.occurred_at.isoformat(),
                None if row.value is None else str(row.value),
                row.properties,
            ],
            order="sorted",
        )
        digest = hashlib.blake2b(content, digest_size=16).digest()
        key = int.from_bytes(digest[:8])
        if key in self._seen:
            earlier = self._repeats.get(key, 1)
            self._repeats[key] = earlier + 1
            return f"csv:{digest.hex()}:{earlier}"
        self._seen.add(key)
        return f"csv:{digest.hex()}"


def _header_for(csv_file: CsvFile, column: str | None, kind: str) -> str | None:
    """Report errors under the file's own header name where there is one."""
    if column is None:
        return None
    for header, (what, name) in zip(csv_file.headers, csv_file.columns, strict=True):
        if what == "field" and name == column:
            return header
    return column


# --- import jobs (the upload page runs these as tasks) -----------------------------------------


def import_job_create(
    *, kind: str, upload, created_by=None, create_customers: bool = False
) -> ImportJob:
    """Store an uploaded file as a pending import; the caller enqueues ``import_job_run``."""
    if kind not in ImportKind.values:
        raise ServiceError(f"Unknown import kind {kind!r}.", field="kind")
    upload.seek(0)
    csv_open(upload, kind=kind)  # refuse files that cannot be imported at all, right away
    job = ImportJob(
        kind=kind,
        filename=getattr(upload, "name", "upload.csv")[:255],
        options={"create_customers": create_customers},
        created_by=created_by,
    )
    job.file.save(job.filename or "upload.csv", upload, save=False)
    job.save()
    return job


def import_job_run(*, job: ImportJob, source: Source | None = None) -> None:
    """Run an import, saving progress after every chunk; failures are recorded on the job."""
    ImportJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, started_at=timezone.now(), message=""
    )
    try:
        with contextlib.ExitStack() as stack:
            if source is None:
                source = stack.enter_context(job.file.open("rb"))
            total = csv_open(source, kind=job.kind).total_rows
            ImportJob.objects.filter(pk=job.pk).update(total_rows=total)

            def progress(rows: int, result: ImportResult) -> None:
                ImportJob.objects.filter(pk=job.pk).update(**_job_counts(rows, result))

            result = csv_import(
                source,
                kind=job.kind,
                create_customers=bool(job.options.get("create_customers")),
                progress=progress,
            )
    except ServiceError as error:
        ImportJob.objects.filter(pk=job.pk).update(
            status=JobStatus.FAILED, message=error.message, finished_at=timezone.now()
        )
        return
    except Exception as error:
        ImportJob.objects.filter(pk=job.pk).update(
            status=JobStatus.FAILED,
            message=f"The import stopped: {type(error).__name__}: {error}",
            finished_at=timezone.now(),
        )
        raise
    ImportJob.objects.filter(pk=job.pk).update(
        status=JobStatus.SUCCEEDED,
        finished_at=timezone.now(),
        total_rows=result.rows,
        **_job_counts(result.rows, result),
    )


def _job_counts(rows: int, result: ImportResult) -> dict[str, Any]:
    return {
        "processed_rows": rows,
        "created": result.created,
        "updated": result.updated,
        "unchanged": result.unchanged + result.duplicates,
        "rejected": result.rejected,
        "errors": [error.as_dict(row_key="line") for error in result.errors],
    }


def import_job_submit(
    *, kind: str, upload, created_by=None, create_customers: bool = False
) -> ImportJob:
    """Create an import job and run it on a worker once the current transaction commits."""
    from django.db import transaction

    from segmentation.tasks import import_job_run_task

    job = import_job_create(
        kind=kind, upload=upload, created_by=created_by, create_customers=create_customers
    )
    transaction.on_commit(lambda: import_job_run_task.delay(job.pk))
    return job
