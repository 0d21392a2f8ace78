from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from abtest.roles import role_required


@role_required("marketer", "integrator")
def customer_list(request: HttpRequest) -> HttpResponse:
    return render(request, "segmentation/customer_list.html")


@role_required("marketer")
def segment_list(request: HttpRequest) -> HttpResponse:
    return render(request, "segmentation/segment_list.html")
