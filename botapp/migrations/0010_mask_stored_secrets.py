"""Mask the secrets that error texts stored before this release may hold (failed tasks, message errors)."""

from django.db import migrations

BATCH = 500


def mask_stored_secrets(apps, schema_editor):
    from botapp.redaction import known_secrets, redact_value

    secrets = known_secrets(bot_model=apps.get_model("botapp", "Bot"))
    task_model = apps.get_model("django_q", "Task")
    for task in task_model.objects.iterator(chunk_size=BATCH):
        masked = {field: redact_value(getattr(task, field), secrets) for field in ("result", "args", "kwargs")}
        if any(masked[field] != getattr(task, field) for field in masked):
            task_model.objects.filter(pk=task.pk).update(**masked)
    message_model = apps.get_model("botapp", "Message")
    errors = message_model.objects.exclude(error="").values_list("pk", "error")
    for pk, error in errors.iterator(chunk_size=BATCH):
        masked = redact_value(error, secrets)
        if masked != error:
            message_model.objects.filter(pk=pk).update(error=masked)


class Migration(migrations.Migration):
    dependencies = [
        ("botapp", "0009_tools"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(mask_stored_secrets, migrations.RunPython.noop, elidable=True)]
