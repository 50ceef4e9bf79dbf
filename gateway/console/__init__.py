"""The web console under ``/console``: server-rendered pages for admins and team members
(docs/console.md). Only ``routes.py`` speaks HTTP; the rest is plain Python."""
