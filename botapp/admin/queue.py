"""Background tasks (django-q2): results and failures, resubmitted only by staff who may change them."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django_q import admin as django_q_admin
from django_q.models import Failure, Success

# --- Background tasks (django-q2) ---------------------------------------------------------------

# django-q2's "resubmit" runs the task's code again (and deletes a failure): not for staff who may only look.
admin.site.unregister(Success)
admin.site.unregister(Failure)


@admin.register(Success)
class SuccessfulTaskAdmin(django_q_admin.TaskAdmin):
    actions = ["resubmit_task"]

    @admin.action(description=django_q_admin.resubmit_task.short_description, permissions=["change"])
    def resubmit_task(self, request: HttpRequest, queryset: QuerySet) -> None:
        django_q_admin.resubmit_task(self, request, queryset)


@admin.register(Failure)
class FailedTaskAdmin(django_q_admin.FailAdmin):
    actions = ["resubmit_task"]

    @admin.action(description=django_q_admin.resubmit_task.short_description, permissions=["change", "delete"])
    def resubmit_task(self, request: HttpRequest, queryset: QuerySet) -> None:
        django_q_admin.resubmit_task(self, request, queryset)
