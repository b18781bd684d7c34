"""Checks contributors run on the source tree (not imported by the application)."""
