"""A test app whose module imports a package that does not exist."""

import rt_no_such_dependency  # noqa: F401


async def app(scope, receive, send):  # pragma: no cover - never reached
    pass
