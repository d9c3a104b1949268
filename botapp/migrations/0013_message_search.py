"""The messages' full-text index (botapp.search.MESSAGES), filled from the messages stored so far.

An FTS5 table on SQLite, a tsvector table with a GIN index on PostgreSQL (botapp.fulltext). Filled in
batches by id, with a line of progress every PROGRESS_EVERY messages: a large table takes minutes.
"""

import sys
import time

from django.db import migrations

from botapp import fulltext

MESSAGES_FTS = fulltext.FullTextIndex("botapp_message_fts")
BATCH = 2000
PROGRESS_EVERY = 100_000


def index_messages(apps, schema_editor):
    Message = apps.get_model("botapp", "Message")
    total = Message.objects.count()
    if not total:
        return
    started = time.monotonic()
    done, last_id, reported = 0, 0, 0
    while True:
        rows = list(
            Message.objects.filter(id__gt=last_id)
            .order_by("id")
            .values_list("id", "conversation_id", "content")[:BATCH]
        )
        if not rows:
            break
        fulltext.index_add(MESSAGES_FTS, [row for row in rows if row[2].strip()])
        done += len(rows)
        last_id = rows[-1][0]
        if done - reported >= PROGRESS_EVERY:
            reported = done
            sys.stdout.write(f"\n  Indexing messages for search: {done:,} of {total:,} ({time.monotonic() - started:.0f} s)")
            sys.stdout.flush()
    if total >= PROGRESS_EVERY:
        sys.stdout.write(f"\n  Indexed {done:,} messages for search in {time.monotonic() - started:.0f} s.\n")
    if schema_editor.connection.vendor == "postgresql":
        # The search asks the planner how common a word is: it needs the new table's statistics now.
        schema_editor.execute(f"ANALYZE {MESSAGES_FTS.name}")


class Migration(migrations.Migration):

    dependencies = [
        ('botapp', '0012_documents'),
    ]

    operations = [
        fulltext.create_operation(MESSAGES_FTS),
        migrations.RunPython(index_messages, migrations.RunPython.noop),
    ]
