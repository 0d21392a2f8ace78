from argparse import ArgumentTypeError
from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from abtest.models import JobStatus
from segmentation.services.event_summary import event_summary_sync
from segmentation.services.refresh import refresh_now


def _as_of(value: str) -> datetime:
    """argparse turns ArgumentTypeError into a usage error (CommandError would be a traceback
    here)."""
    try:
        moment = datetime.fromisoformat(value)
        moment = moment.astimezone(UTC) if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)
    except ValueError:
        raise ArgumentTypeError(f"{value!r} is not an ISO 8601 date or date-time") from None
    except OverflowError:
        moment = datetime.min.replace(tzinfo=UTC)
    # The recompute looks back up to a year from the as-of: keep that within the calendar.
    if not 2 <= moment.year <= 9998:
        raise ArgumentTypeError(f"{value!r} is out of range (years 2 to 9998)")
    return moment


class Command(BaseCommand):
    help = (
        "Recompute customer metrics, RFM scores, engagement tiers and every segment's "
        "membership (the same pipeline beat runs hourly)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--as-of",
            type=_as_of,
            default=None,
            help="Compute as of this moment (ISO 8601; naive means UTC). Default: now.",
        )
        parser.add_argument(
            "--rebuild-event-summary",
            action="store_true",
            help="First rebuild the per-customer event summary from all events (PostgreSQL).",
        )
        parser.add_argument(
            "--full",
            action="store_true",
            help=(
                "Recompute every customer's metrics from the events, even where an "
                "incremental recompute is possible (PostgreSQL)."
            ),
        )

    def handle(
        self,
        *args,
        as_of: datetime | None,
        rebuild_event_summary: bool,
        full: bool,
        **options,
    ):
        if rebuild_event_summary:
            result = event_summary_sync(rebuild=True)
            if result is None:
                self.stdout.write("No event summary on this database (SQLite): nothing to do.")
            else:
                self.stdout.write(
                    f"Event summary rebuilt from {result.events:,} events "
                    f"in {result.seconds:.1f} s."
                )
        run = refresh_now(as_of=as_of, trigger="command", full_metrics=full)
        for step, seconds in run.timings.items():
            self.stdout.write(f"  {step}: {seconds:.2f} s")
        if run.status != JobStatus.SUCCEEDED:
            raise CommandError(f"Refresh #{run.pk} {run.status}: {run.message}")
        self.stdout.write(
            self.style.SUCCESS(f"Refresh #{run.pk} done as of {run.as_of:%Y-%m-%d %H:%M %Z}.")
        )
