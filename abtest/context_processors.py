from django.http import HttpRequest

from abtest.roles import user_roles


def roles(request: HttpRequest) -> dict:
    """Expose the user's roles so the navigation shows what they can open.

    Display only: every view checks the role on the server.
    """
    user_role_set = user_roles(getattr(request, "user", None))
    return {
        "is_marketer": "marketer" in user_role_set,
        "is_integrator": "integrator" in user_role_set,
    }
