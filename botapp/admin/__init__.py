"""Django admin for Jarvis: people, bots, personas, prices, conversations, the ledger and the usage dashboard.

Each area has its module; tools, MCP servers and documents have their admin beside their code.
"""

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

admin.site.site_header = _("Jarvis administration")
admin.site.site_title = _("Jarvis admin")
admin.site.index_title = _("Jarvis: people, bots, conversations and costs")

from botapp.admin import bots, conversations, people, prices, queue  # noqa: E402, F401
from botapp.tools import admin as _tools_admin  # noqa: E402, F401
