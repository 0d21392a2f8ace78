from django.urls import include, path
from rest_framework.routers import DefaultRouter

from segmentation import api

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("customers", api.CustomerViewSet, basename="customer")

urlpatterns = [
    path("events/", api.EventApi.as_view(), name="event-list"),
    path("", include(router.urls)),
]
