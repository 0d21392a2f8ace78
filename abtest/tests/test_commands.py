import io

from django.contrib.auth.models import User
from django.core.management import call_command


def test_ensure_admin_creates_a_superuser_once_and_prints_its_password(db, monkeypatch):
    monkeypatch.setenv("PORT", "9123")
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    password = out.getvalue().split("password: ")[1].split()[0]
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.check_password(password)
    assert "http://127.0.0.1:9123/accounts/login/" in out.getvalue()
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    assert "already exists" in out.getvalue()
    assert User.objects.filter(username="admin").count() == 1
