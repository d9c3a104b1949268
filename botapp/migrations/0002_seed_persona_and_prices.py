"""Seed the default persona ("Jarvis", the seed's assistant) and today's public OpenAI list prices."""

from django.db import migrations

from botapp.defaults import seed_defaults


def seed(apps, schema_editor):
    seed_defaults(apps.get_model("botapp", "ModelPrice"), apps.get_model("botapp", "Persona"))


class Migration(migrations.Migration):
    dependencies = [("botapp", "0001_initial")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
