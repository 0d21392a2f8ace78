"""A TRUNCATE of the customers empties their metrics too (and the stale list).

Rule previews and refreshes count metrics-only rules over the metrics table alone, trusting
that a metrics row without a customer is on the stale list (see
``segmentation.rules._live_metrics``). A DELETE puts the customers there; a TRUNCATE has no
rows to list, so it takes the metrics with it (DELETE, not TRUNCATE: a TRUNCATE naming both
tables, as Django's test flush does, would find the metrics in use by the statement).
"""

from django.db import migrations

from abtest.migration_ops import PostgresOnlySQL

FUNCTION = """
CREATE OR REPLACE FUNCTION segmentation_customer_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE segmentation_metricsstate SET last_event_id = 0;
        {truncate}
    ELSE
        INSERT INTO segmentation_stalecustomermetrics (customer_id)
        SELECT id FROM old_rows ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;
"""

FORWARDS = FUNCTION.format(
    truncate=(
        "DELETE FROM segmentation_customermetrics; DELETE FROM segmentation_stalecustomermetrics;"
    )
)
BACKWARDS = FUNCTION.format(truncate="")


class Migration(migrations.Migration):
    dependencies = [
        ("segmentation", "0007_metrics_incremental"),
    ]

    operations = [PostgresOnlySQL(FORWARDS, BACKWARDS)]
