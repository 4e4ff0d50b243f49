"""Receipts for people: signing is done by the domain; here the view model, the HTML
page and 查验 page, the PDF, the public routes and their rate limit. Imports
``domain/``, never ``audit/``."""
