"""An update that moves events later raises the summary's newest event time.

``EventSummaryState.max_occurred_at`` tells the metrics recompute whether the summary holds
events after its as-of (then it reads the events instead). The update and delete triggers
re-summarize the customers they touch from their events, which can hold a time later than
that bound after an UPDATE of ``occurred_at``: the bound now follows (it is never lowered,
so it stays an upper bound after deletions).
"""

from django.db import migrations

from abtest.migration_ops import PostgresOnlySQL

# Keep the lock key in step with segmentation.services.event_summary.
REWRITE_LOCK_KEY = 7_320_102

FUNCTION = """
CREATE OR REPLACE FUNCTION segmentation_event_summary_recompute(customers bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    cutoff bigint;
BEGIN
    PERFORM pg_advisory_xact_lock({lock});
    SELECT last_event_id INTO cutoff FROM segmentation_eventsummarystate WHERE id = 1;
    IF cutoff IS NULL OR cutoff = 0 OR cardinality(customers) = 0 THEN
        RETURN;
    END IF;
    DELETE FROM segmentation_customereventsummary WHERE customer_id = ANY (customers);
    INSERT INTO segmentation_customereventsummary
        (customer_id, type, count, value_cents, first_at, last_at)
    SELECT e.customer_id, e.type, count(*), coalesce(sum(CAST(e.value * 100 AS BIGINT)), 0),
           min(e.occurred_at), max(e.occurred_at)
    FROM segmentation_event e
    WHERE e.customer_id = ANY (customers) AND e.id <= cutoff
    GROUP BY e.customer_id, e.type;
    {raise_newest}
END $$;
"""

RAISE_NEWEST = """
    UPDATE segmentation_eventsummarystate s SET max_occurred_at = n.newest
    FROM (
        SELECT max(last_at) AS newest FROM segmentation_customereventsummary
        WHERE customer_id = ANY (customers)
    ) n
    WHERE s.id = 1 AND n.newest > coalesce(s.max_occurred_at, '-infinity');
"""

FORWARDS = FUNCTION.format(lock=REWRITE_LOCK_KEY, raise_newest=RAISE_NEWEST)
BACKWARDS = FUNCTION.format(lock=REWRITE_LOCK_KEY, raise_newest="")


class Migration(migrations.Migration):
    dependencies = [
        ("segmentation", "0008_truncate_customers_empties_metrics"),
    ]

    operations = [PostgresOnlySQL(FORWARDS, BACKWARDS)]
