"""Shared helpers for the PostgreSQL benchmarks (bench_import, bench_ingest, bench_refresh,
bench_preview).

- Databases. ``scratch_database(name)`` creates a fresh database, migrates it with
  ``manage.py migrate`` in a subprocess and drops it at the end (``BENCH_KEEP=1`` keeps it).
  ``loaded_database()`` is the one shared, cached database: 1M customers and 10M events,
  built once and reused by bench_refresh and bench_preview while a marker (data version, the
  data's end date and a fingerprint of every migration) still matches; ``BENCH_REBUILD=1``
  forces a rebuild, ``python bench/_support.py clean`` drops every ``abtest_bench*`` database
  and the cached files.
- Data. Deterministic (seeded numpy), cached under ``bench/.data/`` (git-ignored): a 1M-row
  customers CSV as an integrator would export it, the same rows in the COPY shape the import
  writes, and 10M events as compact arrays (customer, type, seconds before the data's end,
  cents) sorted by time. Events reach PostgreSQL by binary COPY of those arrays into a staging
  table and one ``INSERT ... SELECT`` (never through the app).
- Django in-process: ``django_setup(db)``; subprocesses get ``bench_env(db)``.
- Output: ``timed``, ``median``/``p95``, ``print_table`` and ``goal`` lines.

Server: PostgreSQL on 127.0.0.1:5432, user postgres, trust auth (``BENCH_PG`` overrides the
``postgres://user@host:port`` part).
"""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "bench" / ".data"
PYTHON = sys.executable
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
DB_PREFIX = "abtest_bench"
LOADED_DB = f"{DB_PREFIX}_loaded"

DATA_VERSION = 1
SEED = 20250611
N_CUSTOMERS = 1_000_000
N_EVENTS = 10_000_000
SPAN_DAYS = 548  # ~18 months of events
SIGNUP_SPAN_DAYS = 3 * 365

EVENT_TYPES = ("purchase", "session", "page_view", "email_click")
#: Per-event odds of the non-purchase types (a customer's purchase propensity comes first).
OTHER_TYPE_ODDS = (0.0, 0.27, 0.60, 0.13)

_STARTED = time.perf_counter()


# --- Output ---------------------------------------------------------------------------------


def log(message: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"[{time.perf_counter() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


@contextmanager
def timed(label: str | None = None) -> Iterator[list[float]]:
    """``with timed("x") as t: ...`` then ``t[0]`` is the elapsed seconds."""
    box: list[float] = [0.0]
    if label:
        log(f"{label} ...")
    started = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - started
        if label:
            log(f"{label}: {box[0]:.2f} s")


@contextmanager
def no_gc() -> Iterator[None]:
    """Build millions of small objects without the cyclic GC rescanning them all the time."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def median(values: Sequence[float]) -> float:
    return float(np.median(values))


def p95(values: Sequence[float]) -> float:
    """Nearest-rank 95th percentile (with 15 runs: the largest but none)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def ratio(figure: float | None, baseline: float | None, *, suffix: str = "x") -> str:
    if not figure or not baseline:
        return "n/a"
    return f"{figure / baseline:.2f}{suffix}"


Row = tuple[str, str, str, str, str]


def print_table(rows: Sequence[Row], *, intro: str = "") -> None:
    if intro:
        print(intro.rstrip() + "\n")
    print("| benchmark | figure | unit | baseline | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(flush=True)


def goal(text: str, met: bool) -> bool:
    print(f"goal: {text}: {'met' if met else 'MISSED'}", flush=True)
    return met


# --- Databases ------------------------------------------------------------------------------


def db_url(name: str) -> str:
    return f"{PG}/{name}"


def connect(name: str, *, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(db_url(name), autocommit=autocommit)


def drop_database(name: str) -> None:
    with connect("postgres") as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_env(name: str, **extra: str) -> dict[str, str]:
    """Environment for a subprocess running the app against database ``name``."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=db_url(name),
        SECRET_KEY=env.get("SECRET_KEY") or "bench-insecure-secret-key-not-for-production",
        DEBUG="0",
        LOG_LEVEL="WARNING",
        SECURE_SSL_REDIRECT="0",
        PYTHONUNBUFFERED="1",
    )
    env.pop("REDIS_URL", None)  # tasks run in-process unless a benchmark sets it
    env.update(extra)
    return env


def create_database(name: str) -> None:
    """Drop ``name`` if it exists, create it and migrate it with ``manage.py migrate``."""
    drop_database(name)
    with connect("postgres") as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with timed(f"migrate {name}"):
        proc = subprocess.run(
            [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=bench_env(name),
            capture_output=True,
            text=True,
        )
    if proc.returncode:
        raise RuntimeError(f"migrate failed:\n{proc.stdout}\n{proc.stderr}")


def keep_databases() -> bool:
    return os.environ.get("BENCH_KEEP", "") not in {"", "0"}


@contextmanager
def scratch_database(name: str = DB_PREFIX) -> Iterator[str]:
    """A fresh, migrated database; dropped at the end unless ``BENCH_KEEP=1``."""
    if not name.startswith(DB_PREFIX):
        raise ValueError(f"benchmark databases are named {DB_PREFIX}*")
    create_database(name)
    try:
        yield name
    finally:
        if keep_databases():
            log(f"kept database {name} (BENCH_KEEP)")
        else:
            drop_database(name)
            log(f"dropped database {name}")


def checkpoint(name: str) -> None:
    """Flush dirty buffers before a timed phase so that no phase pays for another's writes."""
    with connect(name) as conn:
        conn.execute("CHECKPOINT")


def vacuum_analyze(name: str, *tables: str) -> None:
    """``VACUUM (ANALYZE)`` each table, leaving its pages marked all-visible (as autovacuum
    would in a running system), so index-only scans read no heap."""
    with connect(name) as conn:
        # Loads commit with synchronous_commit off, and a VACUUM right after such a commit
        # cannot mark the rows' pages all-visible (their commit is not known to be durable
        # yet): it silently left the 1M loaded customers without a visibility map
        # (relallvisible 0), so every index-only lookup of a customer read the heap too. A
        # checkpoint settles the commits first.
        conn.execute("CHECKPOINT")
        for table in tables:
            conn.execute(f"VACUUM (ANALYZE) {table}")


def setup_session(conn: psycopg.Connection) -> None:
    """Untimed data loading only: bigger sort memory, no commit flush wait."""
    conn.execute("SET maintenance_work_mem = '1GB'")
    conn.execute("SET work_mem = '256MB'")
    conn.execute("SET synchronous_commit = off")


# --- Django ---------------------------------------------------------------------------------


def django_setup(name: str) -> None:
    """Configure Django in this process against database ``name`` (call before app imports)."""
    for key, value in bench_env(name).items():
        os.environ[key] = value
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "abtest.settings")
    import django

    django.setup()


def fingerprint(paths: Sequence[Path], *extra: object) -> str:
    digest = hashlib.sha256(repr(extra).encode())
    for path in sorted(paths):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def migrations_fingerprint() -> str:
    return fingerprint(list(ROOT.glob("*/migrations/*.py")))


def code_fingerprint() -> str:
    """The code a metrics + segment refresh runs (to know whether cached results are stale)."""
    paths = [*ROOT.glob("segmentation/services/*.py"), *ROOT.glob("segmentation/*.py")]
    return fingerprint(paths)


# --- Data: customers ------------------------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST_NAMES = _words(
    "James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth David Barbara "
    "Richard Susan Joseph Jessica Thomas Sarah Charles Karen Daniel Nancy Matthew Lisa Anthony "
    "Betty Mark Sandra Paul Ashley Steven Emily Andrew Donna Joshua Michelle Kevin Carol Brian "
    "Amanda Emma Olivia Noah Liam Sophie Lukas Hannah Leon Mia Felix Lea Jonas Anna Paul Marie "
    "Hugo Chloe Louis Camille Jules Ines Lucas Manon Mateo Lucia Pablo Sofia Hugo Martina Joao "
    "Ana Pedro Beatriz Giulia Francesco Chiara Lorenzo Sanne Daan Yuki Haruto Sakura Ren Aiko "
    "Priya Arjun Wei Mei Omar Fatima Amir Layla Ivan Olga Nikos Eleni Sven Ingrid Aoife Sean"
)
LAST_NAMES = _words(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
    "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen "
    "Hill Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Muller "
    "Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Dubois Durand Lefebvre "
    "Moreau Laurent Simon Michel Garnier Rossi Russo Ferrari Esposito Bianchi Romano Colombo "
    "Silva Santos Oliveira Souza Costa Pereira Jansen DeVries Bakker Visser Sato Suzuki "
    "Takahashi Tanaka Watanabe Kim Park Chen Wang Zhang Singh Patel Kumar Ivanov Popescu Nowak "
    "Kowalski Horvat Novak Andersson Johansson Hansen Murphy Kelly OBrien Byrne"
)
# Display names with their real spelling for a share of the rows (emails stay ASCII).
ACCENTED = {"Muller": "Müller", "Ines": "Inès", "Joao": "João", "OBrien": "O'Brien"}
DOMAINS = _words(
    "gmail.com yahoo.com outlook.com hotmail.com icloud.com gmx.de web.de orange.fr "
    "libero.it uol.com.br proton.me example.org acme.io"
)
DOMAIN_ODDS = (30, 9, 10, 8, 8, 5, 4, 4, 3, 4, 3, 6, 6)
# (locale, time zone, weight); "" = not given.
LOCALES = (
    ("en-US", "America/New_York", 22),
    ("en-US", "America/Los_Angeles", 10),
    ("en-US", "America/Chicago", 8),
    ("en-GB", "Europe/London", 10),
    ("de-DE", "Europe/Berlin", 12),
    ("fr-FR", "Europe/Paris", 9),
    ("es-ES", "Europe/Madrid", 5),
    ("it-IT", "Europe/Rome", 4),
    ("pt-BR", "America/Sao_Paulo", 6),
    ("nl-NL", "Europe/Amsterdam", 3),
    ("ja-JP", "Asia/Tokyo", 3),
    ("", "", 8),
)
CITIES = {
    "America/New_York": ("New York", "Boston", "Philadelphia", "Atlanta", "Miami"),
    "America/Los_Angeles": ("Los Angeles", "San Francisco", "Seattle", "Portland", "San Diego"),
    "America/Chicago": ("Chicago", "Dallas", "Houston", "Minneapolis", "Austin"),
    "Europe/London": ("London", "Manchester", "Birmingham", "Leeds", "Glasgow"),
    "Europe/Berlin": ("Berlin", "Hamburg", "Munich", "Cologne", "Frankfurt"),
    "Europe/Paris": ("Paris", "Lyon", "Marseille", "Toulouse", "Lille"),
    "Europe/Madrid": ("Madrid", "Barcelona", "Valencia", "Seville", "Bilbao"),
    "Europe/Rome": ("Rome", "Milan", "Naples", "Turin", "Florence"),
    "America/Sao_Paulo": ("Sao Paulo", "Rio de Janeiro", "Curitiba", "Recife", "Brasilia"),
    "Europe/Amsterdam": ("Amsterdam", "Rotterdam", "Utrecht", "The Hague", "Eindhoven"),
    "Asia/Tokyo": ("Tokyo", "Osaka", "Yokohama", "Nagoya", "Sapporo"),
    "": ("", "", "", "Berlin", "London"),
}
STATUSES = (("subscribed", 85), ("unsubscribed", 10), ("bounced", 4), ("complained", 1))
PLANS = (("free", 55), ("basic", 25), ("pro", 15), ("enterprise", 5))
CHANNELS = (("organic", 40), ("ads", 30), ("referral", 15), ("partner", 8), ("email", 7))

CUSTOMER_CSV_HEADER = (
    "external_id,email,first_name,last_name,locale,time_zone,subscription_status,"
    "plan,city,signup_channel,age"
)
#: The columns the import writes, in the order of the COPY file.
CUSTOMER_COPY_COLUMNS = (
    "external_id, email, first_name, last_name, locale, time_zone, subscription_status, "
    "attributes, created_at, updated_at"
)
CUSTOMER_COPY_TIME = "2025-06-01 00:00:00+00"


def _pick(rng: np.random.Generator, options: Sequence, weights: Sequence[float], n: int):
    p = np.asarray(weights, dtype=float)
    return rng.choice(len(options), size=n, p=p / p.sum())


def external_ids(n: int = N_CUSTOMERS) -> list[str]:
    """Unique, scattered 9-digit keys (an affine permutation modulo a prime)."""
    keys = (np.arange(n, dtype=np.int64) * 7_919 + 104_729) % 999_999_937
    return [f"C{k:09d}" for k in keys.tolist()]


@dataclass(frozen=True)
class CustomerFiles:
    csv: Path  # the import file (attributes as plain columns)
    copy: Path  # the same rows as the import stores them, for COPY (FORMAT csv)
    rows: int


def customer_files(n: int = N_CUSTOMERS) -> CustomerFiles:
    """The customers CSV and its COPY twin, generated once and cached."""
    stem = f"customers-v{DATA_VERSION}-{n}"
    files = CustomerFiles(DATA_DIR / f"{stem}.csv", DATA_DIR / f"{stem}.copy.csv", n)
    if files.csv.exists() and files.copy.exists():
        return files
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    with timed(f"generate {n:,} customers"):
        _write_customers(files, n)
    return files


def _write_customers(files: CustomerFiles, n: int) -> None:
    """Vectorized over numpy object arrays (string concatenation runs in C loops)."""
    rng = np.random.default_rng(SEED)

    def table(values: Sequence[str]) -> np.ndarray:
        return np.array(values, dtype=object)

    def choose(options: Sequence, weights: Sequence[float]) -> np.ndarray:
        return table([str(o) for o in options])[_pick(rng, options, weights, n)]

    ids = table(external_ids(n))
    first_i = rng.integers(0, len(FIRST_NAMES), n)
    last_i = rng.integers(0, len(LAST_NAMES), n)
    accent = rng.random(n) < 0.3
    domain = "@" + choose(DOMAINS, DOMAIN_ODDS)
    style = rng.integers(0, 4, n)
    has_email = rng.random(n) >= 0.05
    place = _pick(rng, LOCALES, [w for *_, w in LOCALES], n)
    city_i = rng.integers(0, 5, n)
    status = choose([s for s, _ in STATUSES], [w for _, w in STATUSES])
    plan = choose([p for p, _ in PLANS], [w for _, w in PLANS])
    channel = choose([c for c, _ in CHANNELS], [w for _, w in CHANNELS])
    ages = np.clip(rng.normal(38, 12, n), 18, 90).astype(int).astype(str).astype(object)
    has_age = rng.random(n) >= 0.15

    first, last = table(FIRST_NAMES)[first_i], table(LAST_NAMES)[last_i]
    first_lc = table([f.lower() for f in FIRST_NAMES])[first_i]
    last_lc = table([la.lower() for la in LAST_NAMES])[last_i]
    initial = table([f[0].lower() for f in FIRST_NAMES])[first_i]
    number = np.arange(n).astype(str).astype(object)
    local = np.select(
        [style == 0, style == 1, style == 2],
        [first + "." + last + number, initial + last_lc + number, first_lc + "_" + last_lc + "."],
        last_lc + "." + first_lc + number,
    )
    local = np.where(style == 2, local + number, local)
    email = np.where(has_email, local + domain, "")
    first = np.where(accent, table([ACCENTED.get(f, f) for f in FIRST_NAMES])[first_i], first)
    last = np.where(accent, table([ACCENTED.get(la, la) for la in LAST_NAMES])[last_i], last)
    locale = table([loc for loc, *_ in LOCALES])[place]
    zone = table([z for _, z, _ in LOCALES])[place]
    towns = table([CITIES[z][k] for _, z, _ in LOCALES for k in range(5)])
    city = towns[place * 5 + city_i]
    age = np.where(has_age, ages, "")

    csv_rows = map(
        ",".join,
        zip(ids, email, first, last, locale, zone, status, plan, city, channel, age, strict=True),
    )
    city_json = np.where(city != "", ', ""city"": ""' + city + '""', "")
    age_json = np.where(has_age, ', ""age"": ' + ages, "")
    attributes = map(
        '"{{""plan"": ""{}""{}, ""signup_channel"": ""{}""{}}}"'.format,
        plan,
        city_json,
        channel,
        age_json,
    )
    stamp = f"{CUSTOMER_COPY_TIME},{CUSTOMER_COPY_TIME}"
    copy_rows = map(
        ('{},{},"{}","{}","{}","{}",{},{},' + stamp).format,
        ids,
        email,
        first,
        last,
        locale,
        zone,
        status,
        attributes,
    )
    _write_atomic(files.csv, CUSTOMER_CSV_HEADER + "\n" + "\n".join(csv_rows) + "\n")
    _write_atomic(files.copy, "\n".join(copy_rows) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# --- Data: events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Events:
    """Events sorted by time; ``number`` is the event's index in the full data set."""

    number: np.ndarray  # int64: global index (event ids are e<number>)
    customer: np.ndarray  # int32: customer index (0-based; database id = index + 1)
    type: np.ndarray  # int8: index into EVENT_TYPES
    offset: np.ndarray  # int32: seconds before the data's end
    cents: np.ndarray  # int32: purchase value in cents, 0 for other types

    def __len__(self) -> int:
        return len(self.number)

    def every(self, step: int) -> Events:
        """Every ``step``-th event: the same customers, types and time span, fewer events."""
        return Events(*(a[::step] for a in self.arrays()))

    def arrays(self) -> tuple[np.ndarray, ...]:
        return (self.number, self.customer, self.type, self.offset, self.cents)


def event_data(n: int = N_EVENTS, customers: int = N_CUSTOMERS) -> Events:
    """``n`` events over ``customers`` customers, generated once and cached (.npz)."""
    path = DATA_DIR / f"events-v{DATA_VERSION}-{customers}-{n}.npz"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        with timed(f"generate {n:,} events"):
            arrays = _generate_events(n, customers)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **arrays)
            tmp.replace(path)
    with np.load(path) as data:
        customer, type_, offset, cents = (
            data["customer"],
            data["type"],
            data["offset"],
            data["cents"],
        )
    return Events(np.arange(len(customer), dtype=np.int64), customer, type_, offset, cents)


def _generate_events(n: int, customers: int) -> dict[str, np.ndarray]:
    """Skewed activity (a fifth of the customers never show up, a few are very busy), each
    customer active over their own window (so recency spreads out), purchase propensity per
    customer, more traffic recently, lognormal order values."""
    rng = np.random.default_rng(SEED + 1)
    span = SPAN_DAYS * 86_400
    activity = rng.gamma(0.5, 1.0, customers)
    customer = rng.choice(customers, size=n, p=activity / activity.sum()).astype(np.int32)
    # Each customer's active window [end + length, end] in seconds before the data's end:
    # starts lean recent (growth), lifetimes are exponential.
    start = (span * (1 - np.sqrt(rng.random(customers)))).astype(np.int64)
    length = np.minimum(rng.exponential(200 * 86_400, customers), start).astype(np.int64)
    end = start - length
    # A few customers were active until the very end.
    end[rng.random(customers) < 0.25] = 0
    length = start - end
    offset = end[customer] + (rng.random(n) * length[customer]).astype(np.int64)
    buyer = rng.beta(1.0, 11.0, customers)  # purchase share per customer, mean ~8%
    u = rng.random(n)
    is_purchase = u < buyer[customer]
    odds = np.asarray(OTHER_TYPE_ODDS[1:]) / sum(OTHER_TYPE_ODDS[1:])
    other = 1 + rng.choice(3, size=n, p=odds)
    type_ = np.where(is_purchase, 0, other).astype(np.int8)
    cents = np.where(is_purchase, np.maximum(100, np.round(rng.lognormal(8.2, 0.9, n))), 0).astype(
        np.int32
    )
    order = np.argsort(-offset, kind="stable")  # oldest first
    return {
        "customer": customer[order],
        "type": type_[order],
        "offset": offset[order].astype(np.int32),
        "cents": cents[order],
    }


def data_end(today: dt.date | None = None) -> dt.datetime:
    """Where the events end: midnight UTC of this week's Monday (so caches live a week)."""
    today = today or dt.datetime.now(dt.UTC).date()
    monday = today - dt.timedelta(days=today.weekday())
    return dt.datetime.combine(monday, dt.time(), tzinfo=dt.UTC)


def event_properties(type_index: int, number: int) -> dict:
    """The small properties object of each event (the SQL below builds the same)."""
    if type_index == 0:
        return {"items": 1 + number % 4}
    if type_index == 1:
        return {"device": ("mobile", "desktop", "tablet")[number % 3]}
    if type_index == 2:
        return {"path": f"/p/{number % 5000}"}
    return {"campaign": f"cmp-{number % 40}"}


_PROPERTIES_SQL = """CASE s.type
    WHEN 0 THEN jsonb_build_object('items', 1 + s.number %% 4)
    WHEN 1 THEN jsonb_build_object(
        'device', (ARRAY['mobile', 'desktop', 'tablet'])[1 + s.number %% 3])
    WHEN 2 THEN jsonb_build_object('path', '/p/' || s.number %% 5000)
    ELSE jsonb_build_object('campaign', 'cmp-' || s.number %% 40)
END"""


def _timestamps(events: Events, end: dt.datetime) -> list[str]:
    """ISO 8601 UTC times, ``2025-01-31T12:00:00``, vectorized."""
    base = np.datetime64(end.astimezone(dt.UTC).replace(tzinfo=None), "s")
    return (base - events.offset.astype("timedelta64[s]")).astype(str).tolist()


def _properties_json(types: list[int], numbers: list[int]) -> list[str]:
    devices = ("mobile", "desktop", "tablet")
    out = []
    for type_, number in zip(types, numbers, strict=True):
        if type_ == 0:
            out.append(f'{{"items":{1 + number % 4}}}')
        elif type_ == 1:
            out.append(f'{{"device":"{devices[number % 3]}"}}')
        elif type_ == 2:
            out.append(f'{{"path":"/p/{number % 5000}"}}')
        else:
            out.append(f'{{"campaign":"cmp-{number % 40}"}}')
    return out


def event_dicts(events: Events, *, end: dt.datetime, ids: list[str]) -> list[dict]:
    """Events as API items (customer by external id, ISO time, value, properties, event id)."""
    stamps = _timestamps(events, end)
    out = []
    with no_gc():
        for number, cust, type_, cents, stamp in zip(
            events.number.tolist(),
            events.customer.tolist(),
            events.type.tolist(),
            events.cents.tolist(),
            stamps,
            strict=True,
        ):
            item = {
                "customer": ids[cust],
                "type": EVENT_TYPES[type_],
                "occurred_at": stamp + "Z",
                "properties": event_properties(type_, number),
                "event_id": f"e{number}",
            }
            if cents:
                item["value"] = cents / 100
            out.append(item)
    return out


EVENT_COPY_COLUMNS = "customer_id, type, occurred_at, value, properties, source, event_id"


def event_copy_text(events: Events, *, end: dt.datetime) -> bytes:
    """The events as COPY text rows (customer ids resolved), as the API path stores them."""
    numbers = events.number.tolist()
    types = events.type.tolist()
    values = [f"{c // 100}.{c % 100:02d}" if c else "\\N" for c in events.cents.tolist()]
    lines = map(
        "{}\t{}\t{}+00\t{}\t{}\t\te{}\n".format,
        (events.customer + 1).tolist(),
        (EVENT_TYPES[t] for t in types),
        _timestamps(events, end),
        values,
        _properties_json(types, numbers),
        numbers,
    )
    with no_gc():
        return "".join(lines).encode()


# --- Loading --------------------------------------------------------------------------------


def copy_bytes(cursor: psycopg.Cursor, statement: str, payload: bytes, block: int = 1 << 20):
    with cursor.copy(statement) as copy:
        view = memoryview(payload)
        for start in range(0, len(view), block):
            copy.write(view[start : start + block])


def load_customers(name: str, *, end: dt.datetime) -> int:
    """Load the 1M customers with ids 1..N (in file order) and signup times spread over three
    years before ``end``; ANALYZE. Returns the row count."""
    files = customer_files()
    payload = files.copy.read_bytes()
    with connect(name, autocommit=False) as conn, conn.cursor() as cur:
        setup_session(conn)
        cur.execute(
            "CREATE TEMP TABLE customer_load (n bigserial, external_id text, email text, "
            "first_name text, last_name text, locale text, time_zone text, "
            "subscription_status text, attributes jsonb, created_at timestamptz, "
            "updated_at timestamptz) ON COMMIT DROP"
        )
        copy_bytes(
            cur, f"COPY customer_load ({CUSTOMER_COPY_COLUMNS}) FROM STDIN (FORMAT csv)", payload
        )
        cur.execute(
            f"""
            INSERT INTO segmentation_customer (id, {CUSTOMER_COPY_COLUMNS})
            SELECT n, external_id, email, first_name, last_name, locale, time_zone,
                   subscription_status, attributes, t, t
            FROM (SELECT *, %(end)s::timestamptz
                      - ((n * 7919) %% {SIGNUP_SPAN_DAYS}) * interval '1 day'
                      - ((n * 104729) %% 86400) * interval '1 second' AS t
                  FROM customer_load) s
            ORDER BY n
            """,
            {"end": end},
        )
        count = cur.rowcount
        cur.execute(
            "SELECT setval(pg_get_serial_sequence('segmentation_customer', 'id'), %s)", [count]
        )
        conn.commit()
    vacuum_analyze(name, "segmentation_customer")
    return count


def _binary_copy(events: Events) -> bytes:
    """PostgreSQL binary COPY of (number int8, customer int4, type int2, offset int4, cents
    int4): fixed-width rows, so numpy writes the whole stream at once."""
    record = np.dtype(
        [
            ("fields", ">i2"),
            ("l0", ">i4"),
            ("number", ">i8"),
            ("l1", ">i4"),
            ("customer", ">i4"),
            ("l2", ">i4"),
            ("type", ">i2"),
            ("l3", ">i4"),
            ("offset", ">i4"),
            ("l4", ">i4"),
            ("cents", ">i4"),
        ]
    )
    rows = np.empty(len(events), dtype=record)
    rows["fields"] = 5
    for length, field in ((8, "l0"), (4, "l1"), (2, "l2"), (4, "l3"), (4, "l4")):
        rows[field] = length
    rows["number"] = events.number
    rows["customer"] = events.customer
    rows["type"] = events.type
    rows["offset"] = events.offset
    rows["cents"] = events.cents
    header = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
    return header + rows.tobytes() + (-1).to_bytes(2, "big", signed=True)


def load_events(name: str, events: Events, *, end: dt.datetime) -> int:
    """Bulk-load events (not through the app): indexes dropped, one INSERT ... SELECT from a
    binary-COPY staging table, indexes rebuilt, VACUUM ANALYZE. Returns the row count."""
    payload = _binary_copy(events)
    with connect(name, autocommit=False) as conn, conn.cursor() as cur:
        setup_session(conn)
        cur.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'segmentation_event'::regclass AND contype = 'u'"
        )
        constraints = cur.fetchall()
        cur.execute(
            "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid "
            "WHERE x.indrelid = 'segmentation_event'::regclass AND NOT x.indisprimary "
            "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)"
        )
        indexes = cur.fetchall()
        for conname, _ in constraints:
            cur.execute(f'ALTER TABLE segmentation_event DROP CONSTRAINT "{conname}"')
        for relname, _ in indexes:
            cur.execute(f'DROP INDEX "{relname}"')
        cur.execute(
            "CREATE TEMP TABLE event_load (number int8, customer int4, type int2, "
            '"offset" int4, cents int4) ON COMMIT DROP'
        )
        with timed(f"COPY {len(events):,} staged events"):
            copy_bytes(
                cur,
                'COPY event_load (number, customer, type, "offset", cents) '
                "FROM STDIN (FORMAT binary)",
                payload,
            )
        with timed("INSERT ... SELECT into segmentation_event"):
            cur.execute(
                f"""
                INSERT INTO segmentation_event ({EVENT_COPY_COLUMNS})
                SELECT s.customer + 1, (%(types)s::text[])[s.type + 1],
                       %(end)s::timestamptz - s."offset" * interval '1 second',
                       CASE WHEN s.cents > 0 THEN s.cents / 100.0 END,
                       {_PROPERTIES_SQL}, '', 'e' || s.number
                FROM event_load s ORDER BY s.number
                """,
                {"types": list(EVENT_TYPES), "end": end},
            )
            count = cur.rowcount
        with timed("rebuild event indexes"):
            for _, definition in indexes:
                cur.execute(definition)
            for conname, definition in constraints:
                cur.execute(
                    f'ALTER TABLE segmentation_event ADD CONSTRAINT "{conname}" {definition}'
                )
        conn.commit()
    with timed("VACUUM ANALYZE segmentation_event"):
        vacuum_analyze(name, "segmentation_event")
    return count


# --- The shared loaded database -------------------------------------------------------------


def _meta(conn: psycopg.Connection) -> dict[str, str]:
    exists = conn.execute("SELECT to_regclass('bench_meta') IS NOT NULL").fetchone()[0]
    if not exists:
        return {}
    return dict(conn.execute("SELECT key, value FROM bench_meta").fetchall())


def meta_get(name: str) -> dict[str, str]:
    try:
        with connect(name) as conn:
            return _meta(conn)
    except psycopg.OperationalError:
        return {}


def meta_set(name: str, **values: str) -> None:
    with connect(name) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_meta (key text PRIMARY KEY, value text)")
        for key, value in values.items():
            conn.execute(
                "INSERT INTO bench_meta VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )


@dataclass(frozen=True)
class LoadedDatabase:
    name: str
    end: dt.datetime  # where the events end: the benchmarks' "now"
    customers: int
    events: int


def loaded_database() -> LoadedDatabase:
    """1M customers and 10M events, migrated by the current migrations; built when missing
    or stale (a few minutes), reused otherwise. Kept between runs (it is the cache)."""
    end = data_end()
    wanted = {
        "data_version": str(DATA_VERSION),
        "customers": str(N_CUSTOMERS),
        "events": str(N_EVENTS),
        "end": end.isoformat(),
        "migrations": migrations_fingerprint(),
    }
    rebuild = os.environ.get("BENCH_REBUILD", "") not in {"", "0"}
    meta = meta_get(LOADED_DB)
    if not rebuild and all(meta.get(k) == v for k, v in wanted.items()) and meta.get("complete"):
        log(f"reusing {LOADED_DB} (data ends {end:%Y-%m-%d}; BENCH_REBUILD=1 rebuilds)")
        return LoadedDatabase(LOADED_DB, end, N_CUSTOMERS, N_EVENTS)
    log(f"building {LOADED_DB}: {N_CUSTOMERS:,} customers, {N_EVENTS:,} events")
    events = event_data()
    create_database(LOADED_DB)
    with timed("load customers"):
        customers = load_customers(LOADED_DB, end=end)
    with timed("load events"):
        count = load_events(LOADED_DB, events, end=end)
    if (customers, count) != (N_CUSTOMERS, N_EVENTS):
        raise RuntimeError(f"loaded {customers:,} customers and {count:,} events")
    # Again, now that the load's commits are long flushed: the VACUUM right after loading the
    # customers could leave every page not all-visible (seen: relallvisible 0), and with no
    # autovacuum on this server nothing would set it, so every index-only scan of the
    # customers' primary key visited the heap (what autovacuum does after a load anywhere else).
    vacuum_analyze(LOADED_DB, "segmentation_customer")
    meta_set(LOADED_DB, **wanted, complete="1")
    return LoadedDatabase(LOADED_DB, end, customers, count)


# --- Segments and the refresh pipeline ------------------------------------------------------

#: Rule segments the benchmarks create (through ``segment_create``) next to the default RFM
#: segments: customer fields, attributes, metrics, event windows, segment membership.
RULE_SEGMENTS: tuple[tuple[str, str, dict], ...] = (
    (
        "Recent pro buyers",
        "bench-recent-pro-buyers",
        {
            "all": [
                {"field": "attributes.plan", "op": "in", "value": ["pro", "enterprise"]},
                {"event": "purchase", "op": "at_least", "count": 1, "days": 30},
            ]
        },
    ),
    (
        "Lapsed high value",
        "bench-lapsed-high-value",
        {
            "all": [
                {"field": "metrics.monetary", "op": "gte", "value": 200},
                {"field": "metrics.recency_days", "op": "gte", "value": 90},
            ]
        },
    ),
    (
        "Browsing, never bought",
        "bench-browsing-never-bought",
        {
            "all": [
                {"event": "page_view", "op": "at_least", "count": 5, "days": 30},
                {"event": "purchase", "op": "never"},
            ]
        },
    ),
    (
        "Subscribed champions",
        "bench-subscribed-champions",
        {
            "all": [
                {"segment": "champions", "op": "in"},
                {"field": "subscription_status", "op": "eq", "value": "subscribed"},
            ]
        },
    ),
    (
        "German email clickers",
        "bench-german-clickers",
        {
            "all": [
                {"field": "locale", "op": "eq", "value": "de-DE"},
                {"event": "email_click", "op": "at_least", "count": 1, "days": 90},
            ]
        },
    ),
)


def ensure_rule_segments() -> int:
    """Create the benchmark's rule segments that are missing (Django must be set up)."""
    from segmentation.models import Segment
    from segmentation.services.segments import segment_create

    created = 0
    for name, slug, rule in RULE_SEGMENTS:
        if not Segment.objects.filter(slug=slug).exists():
            segment_create(name=name, kind="rule", rule=rule, slug=slug)
            created += 1
    return created


@dataclass(frozen=True)
class RefreshFigures:
    seconds: float  # refresh_now() wall time
    peak_rss_mb: float  # the process's peak RSS (VmHWM)
    start_rss_mb: float  # RSS just before the refresh (Django set up, code imported)
    timings: dict
    status: str


#: What a refresh writes (emptied to start from "never refreshed").
DERIVED_TABLES = (
    "segmentation_customereventsummary",
    "segmentation_eventsummarystate",
    "segmentation_customermetrics",
    "segmentation_segmentmembership",
    "segmentation_metricsstate",
    "segmentation_stalecustomermetrics",
    "segmentation_segmentsizesnapshot",
    "segmentation_refreshrun",
)


def reset_derived(db: str) -> None:
    """Back to 'never refreshed': no metrics, memberships, snapshots or runs."""
    with connect(db) as conn:
        conn.execute(f"TRUNCATE {', '.join(DERIVED_TABLES)}")
        conn.execute("UPDATE segmentation_segment SET size = 0, refreshed_at = NULL")
    vacuum_analyze(db, "segmentation_segment")
    checkpoint(db)


class RefreshTimeout(Exception):
    """The refresh did not finish within the time allowed (its backends were terminated)."""


def terminate_backends(name: str) -> None:
    """End every other session on database ``name`` (a killed client's query would go on)."""
    with connect("postgres") as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            [name],
        )


def refresh_in_child(name: str, as_of: dt.datetime, *, timeout: float | None = None):
    """Run ``refresh_now(as_of=...)`` in a fresh Python process (like a worker's task) and
    read its wall time and peak RSS. Raises ``RefreshTimeout`` after ``timeout`` seconds."""
    try:
        proc = subprocess.run(
            [PYTHON, str(Path(__file__).resolve()), "refresh", name, as_of.isoformat()],
            cwd=ROOT,
            env=bench_env(name),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        terminate_backends(name)
        raise RefreshTimeout(f"refresh_now did not finish in {timeout:.0f} s") from None
    result = next(
        (line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None
    )
    if proc.returncode or result is None:
        raise RuntimeError(f"refresh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    figures = RefreshFigures(**json.loads(result))
    if figures.status != "succeeded":
        raise RuntimeError(f"refresh run {figures.status}: {figures.timings}")
    return figures


def _proc_status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _refresh_child(name: str, as_of: str) -> None:
    """The child: Django on ``name``, one ``refresh_now``, a RESULT line. Peak memory is this
    process's VmHWM (``ru_maxrss`` would report the parent's size at fork: it survives exec)."""
    django_setup(name)
    from segmentation.services.refresh import refresh_now

    start_rss = _proc_status_mb("VmRSS")
    started = time.perf_counter()
    run = refresh_now(as_of=dt.datetime.fromisoformat(as_of), trigger="command")
    seconds = time.perf_counter() - started
    message = {"message": run.message} if run.message else {}
    print(
        "RESULT "
        + json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": _proc_status_mb("VmHWM"),
                "start_rss_mb": start_rss,
                "timings": {**run.timings, **message},
                "status": run.status,
            }
        )
    )


def clean() -> None:
    with connect("postgres") as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", [f"{DB_PREFIX}%"]
            )
        ]
    for name in names:
        drop_database(name)
        print(f"dropped {name}")
    if DATA_DIR.exists():
        shutil.rmtree(DATA_DIR)
        print(f"removed {DATA_DIR}")


if __name__ == "__main__":
    if sys.argv[1:] == ["clean"]:
        clean()
    elif sys.argv[1:2] == ["refresh"] and len(sys.argv) == 4:
        _refresh_child(sys.argv[2], sys.argv[3])
    elif sys.argv[1:] == ["data"]:
        customer_files()
        event_data()
    else:
        print("usage: python bench/_support.py clean|data|refresh DB AS_OF", file=sys.stderr)
        sys.exit(2)
