from django.urls import include, path
from rest_framework.routers import DefaultRouter

from segmentation.api.customers import CustomerViewSet
from segmentation.api.events import EventApi
from segmentation.api.segments import RefreshRunViewSet, SegmentViewSet

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("customers", CustomerViewSet, basename="customer")
router.register("segments", SegmentViewSet, basename="segment")
router.register("refreshes", RefreshRunViewSet, basename="refresh")

urlpatterns = [
    path("events/", EventApi.as_view(), name="event-list"),
    path("", include(router.urls)),
]
