"""CSV import: mapping, encodings, delimiters, row-numbered errors, idempotent re-imports."""

from __future__ import annotations

import io
from decimal import Decimal

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command

from abtest.models import JobStatus
from segmentation.models import Customer, Event, ImportJob
from segmentation.services.imports import (
    CsvError,
    csv_import,
    csv_open,
    import_job_create,
    import_job_run,
)
from segmentation.tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

CUSTOMERS = """external_id,Email,First Name,last_name,plan,seats,status
c1,ann@example.com,Ann,Lee,pro,3,subscribed
c2,bob@example,Bob,Ray,free,1,
c3,cy@example.com,Cy,,team,007,unsubscribed
,nobody@example.com,No,Id,,,
c4,dee@example.com,Dee,Fox,,,frozen
"""


def test_customer_csv_maps_headers_and_reports_bad_rows_by_line():
    result = csv_import(CUSTOMERS.encode(), kind="customers")
    assert (result.rows, result.created, result.rejected) == (5, 2, 3)
    assert [(e.row, e.column) for e in result.errors] == [
        (3, "Email"),
        (5, "external_id"),
        (6, "status"),
    ]
    c1 = Customer.objects.get(external_id="c1")
    assert (c1.email, c1.first_name, c1.last_name) == ("ann@example.com", "Ann", "Lee")
    assert c1.attributes == {"plan": "pro", "seats": 3}
    c3 = Customer.objects.get(external_id="c3")
    assert c3.attributes == {"plan": "team", "seats": "007"}, "only exact integers become numbers"
    assert c3.subscription_status == "unsubscribed"


def test_reimporting_the_same_customer_file_changes_nothing():
    csv_import(CUSTOMERS.encode(), kind="customers")
    stamps = dict(Customer.objects.values_list("external_id", "updated_at"))
    result = csv_import(CUSTOMERS.encode(), kind="customers")
    assert (result.created, result.updated, result.unchanged, result.rejected) == (0, 0, 2, 3)
    assert dict(Customer.objects.values_list("external_id", "updated_at")) == stamps


def test_awkward_characters_survive_the_import_exactly():
    text = (
        "external_id,first_name,last_name,note\n"
        'w1,"Tab\there","Back\\slash \\N","line one\nline two"\n'
        'w2,Zoë,"quote ""q"" \r done",caf\u00e9 \\t {}\n'
    )
    result = csv_import(text.encode(), kind="customers", chunk_rows=1)
    assert (result.created, result.rejected) == (2, 0)
    w1 = Customer.objects.get(external_id="w1")
    assert (w1.first_name, w1.last_name) == ("Tab\there", "Back\\slash \\N")
    assert w1.attributes == {"note": "line one\nline two"}
    w2 = Customer.objects.get(external_id="w2")
    assert w2.first_name == "Zoë"
    assert w2.last_name == 'quote "q" \r done'
    assert w2.attributes == {"note": "café \\t {}"}
    again = csv_import(text.encode(), kind="customers")
    assert (again.created, again.updated, again.unchanged) == (0, 0, 2)


def test_repeats_in_a_file_are_reported_by_line_and_the_first_row_wins():
    text = (
        "external_id,email,first_name\n"
        "r1,one@example.com,First\n"
        "r2,two@example.com,Two\n"
        "r1,other@example.com,Second\n"
        "r3,TWO@example.com,Three\n"
    )
    result = csv_import(text.encode(), kind="customers")
    assert (result.created, result.rejected) == (2, 2)
    assert [(e.row, e.column) for e in result.errors] == [(4, "external_id"), (5, "email")]
    assert "(first at 2)" in result.errors[0].reason
    assert "(first at 3)" in result.errors[1].reason
    assert Customer.objects.get(external_id="r1").first_name == "First"
    assert not Customer.objects.filter(external_id="r3").exists()


def test_import_in_chunks_reports_progress_and_every_bad_line():
    lines = ["external_id,email"]
    for i in range(1, 24):
        lines.append(f"k{i},k{i}@example.com" if i % 5 else f"k{i},not-an-email")
    calls = []
    result = csv_import(
        ("\n".join(lines) + "\n").encode(),
        kind="customers",
        chunk_rows=4,
        progress=lambda rows, partial: calls.append((rows, partial.created, partial.rejected)),
    )
    assert (result.rows, result.created, result.rejected) == (23, 19, 4)
    assert [e.row for e in result.errors] == [6, 11, 16, 21]  # the file's own line numbers
    assert [rows for rows, _, _ in calls] == [4, 8, 12, 16, 20, 23]
    assert calls[-1] == (23, 19, 4)
    assert Customer.objects.count() == 19


def test_the_first_chunk_is_smaller_so_writing_starts_early(monkeypatch):
    from segmentation.services import imports

    monkeypatch.setattr(imports, "FIRST_CHUNK_ROWS", 3)
    text = "external_id\n" + "".join(f"f{i}\n" for i in range(20))
    calls = []
    result = csv_import(
        text.encode(), kind="customers", chunk_rows=8, progress=lambda rows, _: calls.append(rows)
    )
    assert calls == [3, 11, 19, 20]
    assert result.created == 20 and Customer.objects.count() == 20


def test_repeated_extra_values_keep_their_own_types():
    # Typed once per distinct text per file, and each cell gets its own text's type.
    rows = [("a1", "7", "true", "07"), ("a2", "7", "True", "x"), ("a3", "07", "TRUE", "7")]
    text = "external_id,n,flag,code\n" + "".join(",".join(r) + "\n" for r in rows)
    csv_import(text.encode(), kind="customers")
    stored = dict(Customer.objects.values_list("external_id", "attributes"))
    assert stored == {
        "a1": {"n": 7, "flag": True, "code": "07"},
        "a2": {"n": 7, "flag": True, "code": "x"},
        "a3": {"n": "07", "flag": True, "code": 7},
    }


def test_a_failing_chunk_stops_the_import_and_keeps_earlier_chunks(monkeypatch):
    from segmentation.services import imports

    applied = []
    real = imports.customers_upsert

    def upsert(*, rows):
        if applied:
            raise RuntimeError("database went away")
        applied.append(len(rows))
        return real(rows=rows)

    monkeypatch.setattr(imports, "customers_upsert", upsert)
    text = "external_id\n" + "".join(f"z{i}\n" for i in range(10))
    with pytest.raises(RuntimeError, match="database went away"):
        csv_import(text.encode(), kind="customers", chunk_rows=3)
    assert applied == [3]
    assert Customer.objects.count() == 3


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_delimiter_is_sniffed_and_a_bom_is_fine(delimiter, bom):
    text = f"external_id{delimiter}email\nx1{delimiter}x1@example.com\nx2{delimiter}\n"
    result = csv_import(bom + text.encode(), kind="customers")
    assert result.created == 2
    assert Customer.objects.get(external_id="x1").email == "x1@example.com"


def test_quoted_fields_with_newlines_keep_line_numbers_right():
    text = 'external_id,first_name,email\nq1,"multi\nline",q1@example.com\nq2,ok,bad\n'
    result = csv_import(text.encode(), kind="customers")
    assert result.created == 1
    assert [(e.row, e.column) for e in result.errors] == [(4, "email")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a CSV file"),
        ("external_id\n\xe9t\xe9\n".encode("latin-1"), "not UTF-8"),
        (b"", "empty"),
        (b"email,first_name\na@example.com,A\n", "Missing column: external_id"),
        (b"external_id,id\n1,2\n", "both map to external_id"),
    ],
)
def test_files_that_cannot_be_imported_get_a_clear_error(content, message):
    with pytest.raises(CsvError, match=message):
        csv_import(content, kind="customers")
    assert Customer.objects.count() == 0


def test_bad_bytes_late_in_a_file_refuse_it_before_any_row_is_imported(monkeypatch):
    from segmentation.services import imports

    monkeypatch.setattr(imports, "_BLOCK", 64)  # many blocks, characters split across them
    good = "".join(f"ü{i},u{i}@example.com\n" for i in range(200))
    content = ("external_id,email\n" + good).encode() + b"late,\xff\n"
    with pytest.raises(CsvError, match=r"not UTF-8 text \(byte \d+\)"):
        csv_import(content, kind="customers")
    assert Customer.objects.count() == 0
    result = csv_import(("external_id,email\n" + good).encode(), kind="customers")
    assert result.created == 200
    assert Customer.objects.filter(external_id="ü199").exists()


def test_paths_and_open_files_are_streamed_and_a_callers_file_stays_usable(tmp_path):
    path = tmp_path / "customers.csv"
    path.write_bytes(b"\xef\xbb\xbfexternal_id;email\np1;p1@example.com\np2;\n")
    assert csv_import(path, kind="customers").created == 2
    assert csv_import(str(path), kind="customers").unchanged == 2
    with path.open("rb") as handle:
        assert csv_open(handle, kind="customers").total_rows == 2
        assert handle.tell() == 0 and not handle.closed
        result = csv_import(handle, kind="customers")
        assert (result.rows, result.unchanged) == (2, 2)
        assert not handle.closed and handle.read(3) == b"\xef\xbb\xbf"


EVENTS = """customer,type,timestamp,amount,sku
c1,purchase,2024-03-01T10:00:00Z,19.90,A-1
c1,session,2024-03-01,,
c1,purchase,2024-03-01T10:00:00Z,19.90,A-1
ghost,session,2024-03-02,,
c1,purchase,not-a-date,5,
"""


def test_event_csv_imports_and_reimport_is_a_no_op():
    CustomerFactory(external_id="c1")
    result = csv_import(EVENTS.encode(), kind="events")
    assert (result.rows, result.created, result.duplicates, result.rejected) == (5, 3, 0, 2)
    assert [(e.row, e.column) for e in result.errors] == [(5, "customer"), (6, "timestamp")]
    purchase = Event.objects.filter(type="purchase").first()
    assert purchase.value == Decimal("19.90") and purchase.properties == {"sku": "A-1"}
    again = csv_import(EVENTS.encode(), kind="events")
    assert (again.created, again.duplicates) == (0, 3)
    assert Event.objects.count() == 3, "identical rows in one file are still distinct events"


def test_event_csv_with_event_ids_and_customer_creation():
    text = (
        "external_id,event,occurred_at,event_id\nn1,signup,2024-01-01,e1\nn1,signup,2024-01-01,e1\n"
    )
    result = csv_import(text.encode(), kind="events", create_customers=True)
    assert (result.created, result.duplicates) == (1, 1)
    assert Customer.objects.filter(external_id="n1").exists()


def test_import_job_runs_with_progress_and_records_errors(settings, tmp_path, marketer):
    settings.MEDIA_ROOT = tmp_path
    upload = SimpleUploadedFile("people.csv", CUSTOMERS.encode(), content_type="text/csv")
    job = import_job_create(kind="customers", upload=upload, created_by=marketer)
    assert job.status == JobStatus.PENDING and job.file.name.endswith(".csv")
    import_job_run(job=job)
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert (job.total_rows, job.processed_rows, job.created, job.rejected) == (5, 5, 2, 3)
    assert job.errors[0] == {"line": 3, "column": "Email", "reason": job.errors[0]["reason"]}
    assert job.percent == 100


def test_import_job_refuses_a_file_that_is_not_csv(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    upload = SimpleUploadedFile("photo.png", b"\x89PNG\r\n\x1a\n\x00\x00", content_type="image/png")
    with pytest.raises(CsvError):
        import_job_create(kind="customers", upload=upload)
    assert ImportJob.objects.count() == 0


def test_import_commands(tmp_path):
    customers = tmp_path / "customers.csv"
    customers.write_text(CUSTOMERS)
    events = tmp_path / "events.csv"
    events.write_text(EVENTS)
    errors = tmp_path / "errors.csv"
    out = io.StringIO()
    call_command(
        "import_customers", str(customers), "--no-progress", "--errors-out", str(errors), stdout=out
    )
    assert "5 rows: 2 created, 0 updated, 0 unchanged, 3 rejected." in out.getvalue()
    assert "line 3, Email:" in out.getvalue()
    assert errors.read_text().splitlines()[0] == "line,column,reason"
    assert len(errors.read_text().splitlines()) == 4
    out = io.StringIO()
    call_command("import_events", str(events), "--no-progress", stdout=out)
    assert "3 events stored, 0 duplicates ignored, 2 rejected" in out.getvalue()
    assert ImportJob.objects.filter(status=JobStatus.SUCCEEDED).count() == 2
    with pytest.raises(CommandError, match="No such file"):
        call_command("import_customers", str(tmp_path / "missing.csv"))
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"\x00\x01\x02")
    with pytest.raises(CommandError, match="not a CSV file"):
        call_command("import_customers", str(bad))
    one = tmp_path / "one.csv"
    one.write_text("external_id,email\nsolo,solo@example.com\n")
    out = io.StringIO()
    call_command("import_customers", str(one), "--no-progress", stdout=out)
    assert "1 row: 1 created, 0 updated, 0 unchanged, 0 rejected." in out.getvalue()


def test_apostrophes_are_text_not_quotes():
    text = (
        "external_id,last_name,city\nv1,'Quoted',X\nv2,'t Hooft,Amsterdam\n"
        "v3,Smith,Paris\nv4,O'Neil',Rome\n"
    )
    result = csv_import(text.encode(), kind="customers")
    assert (result.rows, result.created, result.rejected) == (4, 4, 0)
    names = dict(Customer.objects.values_list("external_id", "last_name"))
    assert names == {"v1": "'Quoted'", "v2": "'t Hooft", "v3": "Smith", "v4": "O'Neil'"}


def test_a_short_and_a_long_row_in_a_small_file_are_reported_not_the_whole_file():
    text = "external_id,email,first_name\nf1,f1@x.com\nf2,f2@x.com,Fay,extra\nf3,f3@x.com,Flo\n"
    result = csv_import(text.encode(), kind="customers")
    assert (result.created, [e.row for e in result.errors]) == (1, [2, 3])


def test_the_delimiter_is_the_one_that_splits_the_header_most():
    text = '"name, full";email;external_id\nAnn, B;a@x.com;a1\n'
    result = csv_import(text.encode(), kind="customers")
    assert result.created == 1
    assert Customer.objects.get().attributes == {"name, full": "Ann, B"}


def test_unicode_digits_stay_text_in_attributes():
    result = csv_import("external_id,score,rank\ns1,\u00b2,-12\n".encode(), kind="customers")
    assert result.created == 1
    assert Customer.objects.get().attributes == {"score": "\u00b2", "rank": -12}


def test_a_utf16_file_is_named_as_such():
    with pytest.raises(CsvError, match="UTF-16"):
        csv_open("external_id\na\n".encode("utf-16"), kind="customers")


def test_events_without_ids_are_duplicates_from_any_copy_of_the_file():
    CustomerFactory(external_id="c1")
    text = (
        "customer,type,occurred_at,value,event_id\nc1,visit,2024-04-01,,EV1\n"
        "c1,visit,2024-04-02,,\nc1,buy,2024-04-02T10:00:00Z,10,\n"
        "c1,buy,2024-04-02T10:00:00Z,10,\n"
    )
    first = csv_import(text.encode(), kind="events")
    assert (first.created, first.duplicates) == (4, 0), "identical rows in one file are distinct"
    again = csv_import(text.encode(), kind="events")
    assert (again.created, again.duplicates) == (0, 4)
    resaved = "\ufeff" + text.replace("\n", "\r\n") + "\r\n"
    resaved = resaved.replace("2024-04-02T10:00:00Z", "2024-04-02T12:00:00+02:00")
    third = csv_import(resaved.encode(), kind="events")
    assert (third.created, third.duplicates) == (0, 4)
    reordered = text.splitlines()
    reordered = (
        "\n".join([reordered[0], *reversed(reordered[1:])]) + "\nc1,buy,2024-04-02T10:00:00Z,10,\n"
    )
    fourth = csv_import(reordered.encode(), kind="events")
    assert (fourth.created, fourth.duplicates) == (1, 4), "a third identical row is a new event"
    assert Event.objects.count() == 5


def test_out_of_range_times_are_row_errors():
    CustomerFactory(external_id="c1")
    text = (
        "customer,type,occurred_at\nc1,s,9999-12-31T23:00:00-05:00\n"
        "c1,s,0001-01-01T00:00:00+01:00\nc1,s,2024-01-01\n"
    )
    result = csv_import(text.encode(), kind="events")
    assert result.created == 1
    assert [(e.row, e.column) for e in result.errors] == [(2, "occurred_at"), (3, "occurred_at")]
