"""Domains plugged into the kit by name (reprokit.registry), the way a student adds their own."""
