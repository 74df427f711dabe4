"""Baton: an OAuth 2.1 authorization server whose login step is a single-page app."""
