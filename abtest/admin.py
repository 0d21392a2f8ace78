from django.contrib import admin

from abtest.admin_actions import export_as_csv
from abtest.models import WorkerHeartbeat

admin.site.site_header = "Abtest administration"
admin.site.site_title = "Abtest admin"


@admin.register(WorkerHeartbeat)
class WorkerHeartbeatAdmin(admin.ModelAdmin):
    list_display = ("queue", "hostname", "seen_at")
    list_filter = ("queue",)
    search_fields = ("hostname",)
    readonly_fields = ("queue", "hostname", "seen_at")
    actions = [export_as_csv]
