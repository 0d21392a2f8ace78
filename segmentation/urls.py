from django.urls import path

from segmentation import views

app_name = "segmentation"

urlpatterns = [
    path("customers/", views.customer_list, name="customer-list"),
    path("segments/", views.segment_list, name="segment-list"),
]
