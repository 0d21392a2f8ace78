from django.db import migrations, models


def create_groups(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    for name in ("Marketers", "Integrators"):
        Group.objects.get_or_create(name=name)


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=["Marketers", "Integrators"]).delete()


class Migration(migrations.Migration):
    initial = True

    dependencies = [("auth", "0012_alter_user_first_name_max_length")]

    operations = [
        migrations.CreateModel(
            name="WorkerHeartbeat",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("queue", models.CharField(max_length=100)),
                ("hostname", models.CharField(max_length=255)),
                ("seen_at", models.DateTimeField(db_index=True)),
            ],
            options={"ordering": ["queue", "hostname"]},
        ),
        migrations.AddConstraint(
            model_name="workerheartbeat",
            constraint=models.UniqueConstraint(
                fields=("queue", "hostname"), name="heartbeat_queue_host"
            ),
        ),
        migrations.RunPython(create_groups, remove_groups),
    ]
