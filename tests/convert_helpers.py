"""Shared by the converter tests."""

from __future__ import annotations


class Payload:
    """Unpickling this calls Path.touch on the marker: code running from a checkpoint file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))
