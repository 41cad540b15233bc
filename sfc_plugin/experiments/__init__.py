"""Runs that combine the library: the demo, the agreement reproduction and the
one-page circuit report."""
