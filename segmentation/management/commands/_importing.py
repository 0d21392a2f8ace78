"""Shared body of ``import_customers`` and ``import_events``."""

from __future__ import annotations

import csv
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from tqdm import tqdm

from abtest.errors import ServiceError
from abtest.models import JobStatus
from segmentation.models import ImportJob
from segmentation.services.imports import MAX_KEPT_ERRORS, ImportResult, csv_import, csv_open


class ImportCommand(BaseCommand):
    """Import a CSV file through the same services as the API, with a progress bar.

    The run is recorded as an import job, so it also shows on the Imports page.
    """

    kind: str = ""

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path, help="The CSV file (UTF-8, header row).")
        parser.add_argument(
            "--errors-out",
            type=Path,
            help="Write every rejected row (line, column, reason) to this CSV file.",
        )
        parser.add_argument("--no-progress", action="store_true", help="No progress bar.")

    def import_options(self, options) -> dict:
        return {}

    def summary(self, result: ImportResult) -> str:
        raise NotImplementedError

    def handle(self, *args, file: Path, errors_out: Path | None, no_progress: bool, **options):
        if not file.is_file():
            raise CommandError(f"No such file: {file}")
        try:
            total = csv_open(file, kind=self.kind).total_rows
        except ServiceError as error:
            raise CommandError(f"{file}: {error.message}") from None
        import_options = self.import_options(options)
        job = ImportJob.objects.create(
            kind=self.kind,
            filename=file.name,
            options=import_options,
            status=JobStatus.RUNNING,
            started_at=timezone.now(),
            total_rows=total,
        )
        bar = tqdm(total=total, unit="rows", disable=no_progress, file=self.stderr._out)
        done = 0

        def progress(rows: int, result: ImportResult) -> None:
            nonlocal done
            bar.update(rows - done)
            done = rows
            bar.set_postfix(rejected=result.rejected, refresh=False)

        try:
            result = csv_import(
                file,
                kind=self.kind,
                progress=progress,
                max_kept_errors=10**9 if errors_out else MAX_KEPT_ERRORS,
                **import_options,
            )
        except Exception as error:
            job.status, job.message, job.finished_at = JobStatus.FAILED, str(error), timezone.now()
            job.save()
            raise
        else:
            # The total was counted in lines; a quoted value can span several.
            bar.total = result.rows
            bar.refresh()
        finally:
            bar.close()
        job.status, job.finished_at = JobStatus.SUCCEEDED, timezone.now()
        job.processed_rows = job.total_rows = result.rows
        job.created, job.updated = result.created, result.updated
        job.unchanged, job.rejected = result.unchanged + result.duplicates, result.rejected
        job.errors = [error.as_dict(row_key="line") for error in result.errors[:MAX_KEPT_ERRORS]]
        job.save()

        self.stdout.write(self.summary(result))
        for error in result.errors[:20]:
            self.stdout.write(f"  line {error.row}, {error.column or 'row'}: {error.reason}")
        if result.rejected > 20:
            self.stdout.write(f"  ... and {result.rejected - 20:,} more rejected rows")
        if errors_out is not None and result.rejected:
            with errors_out.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["line", "column", "reason"])
                for error in result.errors:
                    writer.writerow([error.row, error.column or "", error.reason])
            self.stdout.write(f"Rejected rows written to {errors_out}")
