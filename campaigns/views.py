from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from abtest.roles import role_required


@role_required("marketer")
def campaign_list(request: HttpRequest) -> HttpResponse:
    return render(request, "campaigns/campaign_list.html")
