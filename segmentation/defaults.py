"""Default RFM segments and the default engagement points model (loaded by a migration).

Both are stored as editable data; these are only the starting point.
"""

from __future__ import annotations

#: (name, slug, R range, F range, description), matched in this order.
RFM_SEGMENTS: list[tuple[str, str, tuple[int, int], tuple[int, int], str]] = [
    ("Champions", "champions", (4, 5), (4, 5), "Bought recently, buy often."),
    ("Loyal", "loyal", (3, 3), (4, 5), "Buy often; not quite as recently."),
    ("Potential loyalists", "potential-loyalists", (4, 5), (2, 3), "Recent, fairly frequent."),
    ("New customers", "new-customers", (5, 5), (1, 1), "Bought very recently, once."),
    ("Promising", "promising", (4, 4), (1, 1), "Bought recently, once."),
    ("Need attention", "need-attention", (3, 3), (3, 3), "Average recency and frequency."),
    ("About to sleep", "about-to-sleep", (3, 3), (1, 2), "Average recency, rare purchases."),
    ("At risk", "at-risk", (1, 2), (3, 4), "Used to buy fairly often, long ago."),
    ("Can't lose them", "cant-lose-them", (1, 2), (5, 5), "Used to buy very often, long ago."),
    ("Hibernating", "hibernating", (1, 2), (1, 2), "Bought rarely, long ago."),
]

#: Points per band on each metric; the total maps to a tier. Bands are min <= value < max.
ENGAGEMENT_MODEL: dict = {
    "rules": [
        {
            "metric": "frequency",
            "bands": [
                {"min": 10, "points": 30},
                {"min": 4, "max": 10, "points": 20},
                {"min": 2, "max": 4, "points": 10},
                {"min": 1, "max": 2, "points": 5},
            ],
        },
        {
            "metric": "recency_days",
            "bands": [
                {"max": 30, "points": 30},
                {"min": 30, "max": 90, "points": 20},
                {"min": 90, "max": 180, "points": 10},
                {"min": 180, "max": 365, "points": 5},
            ],
        },
        {
            "metric": "monetary",
            "bands": [
                {"min": 500, "points": 25},
                {"min": 100, "max": 500, "points": 15},
                {"min": 25, "max": 100, "points": 8},
                {"min": 0.01, "max": 25, "points": 3},
            ],
        },
        {
            "metric": "emails_clicked",
            "bands": [
                {"min": 5, "points": 15},
                {"min": 2, "max": 5, "points": 10},
                {"min": 1, "max": 2, "points": 5},
            ],
        },
    ],
    "tiers": [
        {"name": "Star", "min_points": 70},
        {"name": "Engaged", "min_points": 40},
        {"name": "Drifting", "min_points": 15},
        {"name": "Lost", "min_points": 0},
    ],
}
