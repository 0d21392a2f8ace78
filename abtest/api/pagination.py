from rest_framework import pagination


class PageNumberPagination(pagination.PageNumberPagination):
    """Default pagination: ``?page=N&page_size=M`` (at most 1,000 per page)."""

    page_size_query_param = "page_size"
    max_page_size = 1000


class CursorPagination(pagination.CursorPagination):
    """Keyset pagination for large, append-mostly tables (stable under concurrent inserts)."""

    page_size_query_param = "page_size"
    max_page_size = 1000
    ordering = "-id"
