"""Base backups join the kinds of backup the catalog records."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("strongroom", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="backup",
            name="backup_type",
            field=models.CharField(
                choices=[
                    ("FULL_DATABASE", "Full database"),
                    ("TENANT_BACKUP", "Tenant backup"),
                    ("WAL_ARCHIVE", "WAL archive"),
                    ("BASE_BACKUP", "Base backup"),
                ],
                default="FULL_DATABASE",
                max_length=20,
            ),
        ),
    ]
