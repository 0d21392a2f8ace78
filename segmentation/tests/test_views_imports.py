"""Import pages: upload, the job page's polled progress bar, rejected rows and their CSV."""

from __future__ import annotations

import csv
import io
import re

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from abtest.models import JobStatus
from segmentation.models import Customer, ImportJob
from segmentation.services.imports import import_job_run

pytestmark = pytest.mark.django_db

LIST = reverse("segmentation:import-list")
HX = {"HX-Request": "true"}
GOOD_AND_BAD = (
    b"external_id,email,first_name,plan\n"
    b"a1,a1@example.com,Ann,pro\n"
    b"a2,not-an-email,Bob,free\n"
    b"a3,a3@example.com,Cy,free\n"
    b",nobody@example.com,No,id\n"
)


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path


def upload(name: str, content: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="text/csv")


def post_file(client, content: bytes, *, kind="customers", name="people.csv", **extra):
    return client.post(LIST, {"kind": kind, "file": upload(name, content), **extra})


@pytest.mark.parametrize(
    ("role", "status"),
    [("staff", 200), ("marketer", 200), ("integrator", 200), ("outsider", 403)],
)
def test_import_pages_are_for_marketers_integrators_and_staff(
    client_for, users, role, status, django_capture_on_commit_callbacks
):
    job = ImportJob.objects.create(kind="customers", filename="x.csv")
    client = client_for(users[role])
    assert client.get(LIST).status_code == status
    assert client.get(reverse("segmentation:import-detail", args=[job.pk])).status_code == status
    assert (
        client.get(reverse("segmentation:import-detail", args=[job.pk]), headers=HX).status_code
        == status
    )
    assert client.get(reverse("segmentation:import-rejected", args=[job.pk])).status_code == status
    with django_capture_on_commit_callbacks():
        response = post_file(client, GOOD_AND_BAD)
    assert response.status_code == (302 if status == 200 else 403)
    assert ImportJob.objects.count() == (2 if status == 200 else 1)


def test_anonymous_is_redirected_to_login(client, db):
    assert client.get(LIST)["Location"].startswith("/accounts/login/")


def test_nav_links_to_imports_for_integrators_not_outsiders(client_for, users):
    assert f'href="{LIST}"' in client_for(users["integrator"]).get(reverse("home")).text
    assert f'href="{LIST}"' not in client_for(users["outsider"]).get(reverse("home")).text


def test_upload_creates_a_pending_job_and_queues_it_after_commit(
    client_for, marketer, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = post_file(client_for(marketer), GOOD_AND_BAD)
    job = ImportJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("segmentation:import-detail", args=[job.pk])
    assert len(callbacks) == 1  # the task is enqueued once the upload is committed
    assert job.status == JobStatus.PENDING and job.kind == "customers"
    assert job.created_by == marketer and job.filename == "people.csv"


def test_event_upload_keeps_the_create_customers_option(
    client_for, integrator, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks():
        post_file(
            client_for(integrator),
            b"customer,type,occurred_at\nx1,purchase,2024-01-01T00:00:00Z\n",
            kind="events",
            create_customers="on",
        )
    assert ImportJob.objects.get().options == {"create_customers": True}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a CSV file"),
        (b"", "The submitted file is empty"),
        (b"email,first_name\na@example.com,Ann\n", "Missing column"),
        (b"\xff\xfe\xfa bad bytes,x\n", "not UTF-8"),
    ],
)
def test_a_file_that_cannot_be_imported_gets_the_message_on_the_form(
    client_for, marketer, content, message
):
    response = post_file(client_for(marketer), content, name="upload.csv")
    assert response.status_code == 400
    assert message in response.text
    assert 'aria-invalid="true"' in response.text
    assert ImportJob.objects.count() == 0


def test_job_page_polls_until_finished_then_stops_with_286(client_for, marketer):
    job = ImportJob.objects.create(kind="customers", filename="people.csv", created_by=marketer)
    url = reverse("segmentation:import-detail", args=[job.pk])
    client = client_for(marketer)

    page = client.get(url).text
    assert "<html" in page and 'hx-trigger="every 1s"' in page and "<progress" in page
    pending = client.get(url, headers=HX)
    assert pending.status_code == 200
    assert "<html" not in pending.text and 'hx-trigger="every 1s"' in pending.text

    ImportJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, total_rows=4, processed_rows=2
    )
    running = client.get(url, headers=HX)
    assert running.status_code == 200 and 'value="50"' in running.text

    import_job_run(job=job, source=GOOD_AND_BAD)
    done = client.get(url, headers=HX)
    assert done.status_code == 286  # htmx stops polling
    assert "hx-trigger" not in done.text and 'value="100"' in done.text
    text = re.sub(r"\s+", " ", done.text)
    assert "Succeeded" in text
    assert re.search(r'class="value">2</div><div class="label">created', text)
    assert re.search(r'id="job-rejected">2<', text)
    assert 'id="rejected-rows"' in text
    assert '<td class="num">3</td>' in text and '<td class="num">5</td>' in text  # lines
    assert set(Customer.objects.values_list("external_id", flat=True)) == {"a1", "a3"}


def test_failed_job_shows_its_message_and_stops_polling(client_for, marketer):
    job = ImportJob.objects.create(
        kind="customers", status=JobStatus.FAILED, message="The import stopped: boom"
    )
    response = client_for(marketer).get(
        reverse("segmentation:import-detail", args=[job.pk]), headers=HX
    )
    assert response.status_code == 286 and "The import stopped: boom" in response.text


def test_rejected_rows_download_as_csv(client_for, marketer):
    job = ImportJob.objects.create(kind="customers", filename="people.csv")
    import_job_run(job=job, source=GOOD_AND_BAD)
    response = client_for(marketer).get(reverse("segmentation:import-rejected", args=[job.pk]))
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["line", "column", "reason"]
    assert [row[0] for row in rows[1:]] == ["3", "5"]
    assert rows[1][1] == "email"


def test_list_shows_recent_jobs(client_for, marketer):
    ImportJob.objects.create(kind="events", filename="events-may.csv", status=JobStatus.SUCCEEDED)
    html = client_for(marketer).get(LIST).text
    assert "events-may.csv" in html and "Succeeded" in html
    for name in ("kind", "file", "create_customers"):
        assert f'name="{name}"' in html
    assert 'enctype="multipart/form-data"' in html


def test_unknown_job_is_404(client_for, marketer):
    assert (
        client_for(marketer).get(reverse("segmentation:import-detail", args=[424242])).status_code
        == 404
    )
