from rest_framework import pagination
from rest_framework.exceptions import ValidationError


class PageNumberPagination(pagination.PageNumberPagination):
    """Default pagination: ``?page=N&page_size=M`` (at most 1,000 per page)."""

    page_size_query_param = "page_size"
    max_page_size = 1000


class CursorPagination(pagination.CursorPagination):
    """Keyset pagination for large, append-mostly tables (stable under concurrent inserts)."""

    page_size_query_param = "page_size"
    max_page_size = 1000
    ordering = "-id"

    def decode_cursor(self, request):
        """DRF answers a cursor it cannot decode with 404 and takes a decoded position on
        trust (a non-integer one reached the database as a 500): both are a bad request."""
        try:
            cursor = super().decode_cursor(request)
        except pagination.NotFound:
            cursor = None
            invalid = True
        else:
            invalid = False
        if cursor is not None and cursor.position is not None:
            try:
                position = int(cursor.position)
            except (TypeError, ValueError):
                invalid = True
            else:
                invalid = not -(2**63) < position < 2**63
        if invalid:
            raise ValidationError({self.cursor_query_param: [self.invalid_cursor_message]})
        return cursor
