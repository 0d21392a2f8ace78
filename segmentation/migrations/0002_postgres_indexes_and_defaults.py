from django.db import migrations

from abtest.migration_ops import PostgresOnlySQL
from segmentation.defaults import ENGAGEMENT_MODEL, RFM_SEGMENTS


def load_defaults(apps, schema_editor):
    Segment = apps.get_model("segmentation", "Segment")
    EngagementModel = apps.get_model("segmentation", "EngagementModel")
    for position, (name, slug, r, f, description) in enumerate(RFM_SEGMENTS):
        Segment.objects.get_or_create(
            slug=slug,
            defaults={
                "name": name,
                "kind": "rfm",
                "rule": {"r": list(r), "f": list(f)},
                "position": position,
                "description": description,
            },
        )
    if not EngagementModel.objects.exists():
        EngagementModel.objects.create(
            name="Default engagement tiers", definition=ENGAGEMENT_MODEL, is_active=True
        )


def unload_defaults(apps, schema_editor):
    apps.get_model("segmentation", "Segment").objects.filter(kind="rfm").delete()
    apps.get_model("segmentation", "EngagementModel").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("segmentation", "0001_initial")]

    operations = [
        # Time-range scans over an append-mostly table: a BRIN index costs almost nothing to
        # maintain at COPY speed.
        PostgresOnlySQL(
            "CREATE INDEX event_time_brin ON segmentation_event USING brin (occurred_at)",
            "DROP INDEX IF EXISTS event_time_brin",
        ),
        # Same uniqueness, but with the pattern operator class so that the customer search's
        # `lower(email) LIKE 'prefix%'` can use the index (the cluster collation is not C).
        PostgresOnlySQL(
            [
                "DROP INDEX customer_email_ci_unique",
                "CREATE UNIQUE INDEX customer_email_ci_unique "
                "ON segmentation_customer (lower(email) text_pattern_ops)",
            ],
            [
                "DROP INDEX customer_email_ci_unique",
                "CREATE UNIQUE INDEX customer_email_ci_unique "
                "ON segmentation_customer (lower(email))",
            ],
        ),
        migrations.RunPython(load_defaults, unload_defaults),
    ]
