"""Test app that cannot be imported: the master must exit 3 with this error."""

raise RuntimeError("master_broken deliberately fails at import")
