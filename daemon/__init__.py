"""The corral master: configuration, listeners, the arbiter and its signals."""
