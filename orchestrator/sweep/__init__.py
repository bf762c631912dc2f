"""The sweep: many trials under Ray Tune (driver, Tune trainable, saved state, resources, pre-flight checks)."""
