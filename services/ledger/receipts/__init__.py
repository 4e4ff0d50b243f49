"""Receipts for people: signing is done by the domain; here who may read which face
(``service``: the owner's full face, the public's masked face), 查验
(``verification``), the view model, the HTML receipt and 查验 pages, the PDF, the
routes, their rate limit (``ratelimit``, buckets in PostgreSQL) and this package's own
SQL (``store``). Imports ``domain/``, never ``audit/``."""
