"""Helpers shared by the tests (builders of event lists, fake results, OGIP checks, cheap survey steps).

Test modules import from here (``from helpers.events import make_event_file``), never from one another.
"""
