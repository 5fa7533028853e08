"""A test app whose module raises while being imported."""


def _explode() -> None:
    raise RuntimeError("rt_import_boom refuses to load")


_explode()


async def app(scope, receive, send):  # pragma: no cover - never reached
    pass
