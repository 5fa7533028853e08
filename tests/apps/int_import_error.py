"""An app module that raises while it is imported (corral must exit 3 showing the exception)."""

raise RuntimeError("int_import_error: cannot reach the settings service")
