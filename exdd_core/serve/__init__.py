"""Serving: scoring new images from the line with the banks and card (`exdd score`, `exdd info`)."""
