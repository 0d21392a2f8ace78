from django.urls import path

from segmentation import views

app_name = "segmentation"

urlpatterns = [
    path("customers/", views.customer_list, name="customer-list"),
    path("customers/<int:pk>/", views.customer_detail, name="customer-detail"),
    path("segments/", views.segment_list, name="segment-list"),
    # Fixed paths first: they shadow segments whose slug is rfm, new, preview or refresh.
    path("segments/rfm/", views.rfm, name="rfm"),
    path("segments/new/", views.segment_create, name="segment-create"),
    path("segments/preview/", views.segment_preview, name="segment-preview"),
    path("segments/refresh/", views.refresh_create, name="refresh-create"),
    path("segments/refresh/<int:pk>/", views.refresh_detail, name="refresh-detail"),
    path("segments/<slug:slug>/", views.segment_detail, name="segment-detail"),
    path("segments/<slug:slug>/edit/", views.segment_update, name="segment-update"),
    path("segments/<slug:slug>/delete/", views.segment_delete, name="segment-delete"),
    path(
        "segments/<slug:slug>/members/add/",
        views.segment_member_add,
        name="segment-member-add",
    ),
    path(
        "segments/<slug:slug>/members/upload/",
        views.segment_member_upload,
        name="segment-member-upload",
    ),
    path(
        "segments/<slug:slug>/members/remove/",
        views.segment_member_remove,
        name="segment-member-remove",
    ),
    path("imports/", views.import_list, name="import-list"),
    path("imports/<int:pk>/", views.import_detail, name="import-detail"),
    path("imports/<int:pk>/rejected.csv", views.import_rejected, name="import-rejected"),
]
