from django.template.defaultfilters import pluralize

from segmentation.management.commands._importing import ImportCommand
from segmentation.models import ImportKind


class Command(ImportCommand):
    help = (
        "Import customers from a CSV file: upsert by external_id; unknown columns become "
        "attributes; bad rows are reported by line and skipped."
    )
    kind = ImportKind.CUSTOMERS

    def summary(self, result) -> str:
        rows = f"{result.rows:,} row{pluralize(result.rows)}"
        return (
            f"{rows}: {result.created:,} created, {result.updated:,} updated, "
            f"{result.unchanged:,} unchanged, {result.rejected:,} rejected."
        )
