from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from abtest.roles import role_required


@role_required("marketer")
def experiment_list(request: HttpRequest) -> HttpResponse:
    return render(request, "experiments/experiment_list.html")
