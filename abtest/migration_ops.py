"""Migration operations for PostgreSQL-only physical design (BRIN indexes, extensions ...).

They leave the model state alone, so ``makemigrations`` stays quiet, and do nothing on SQLite,
where the portable indexes declared on the models suffice.
"""

from __future__ import annotations

from django.db import migrations


class PostgresOnlySQL(migrations.RunSQL):
    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)

    def describe(self) -> str:
        return "Raw SQL (PostgreSQL only)"
