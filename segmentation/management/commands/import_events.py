from django.template.defaultfilters import pluralize

from segmentation.management.commands._importing import ImportCommand
from segmentation.models import ImportKind


class Command(ImportCommand):
    help = (
        "Import events from a CSV file (columns customer, type, occurred_at; optional value, "
        "event_id, source, properties). Re-importing the same file stores nothing twice."
    )
    kind = ImportKind.EVENTS

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument(
            "--create-customers",
            action="store_true",
            help="Create customers for unknown external ids instead of rejecting those rows.",
        )

    def import_options(self, options) -> dict:
        return {"create_customers": options["create_customers"]}

    def summary(self, result) -> str:
        rows = f"{result.rows:,} row{pluralize(result.rows)}"
        return (
            f"{rows}: {result.created:,} events stored, "
            f"{result.duplicates:,} duplicates ignored, {result.rejected:,} rejected."
        )
