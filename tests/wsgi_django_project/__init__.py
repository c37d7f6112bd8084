"""A minimal Django project (no database, no sessions) that tests/test_wsgi_frameworks.py serves
through trioserve's WSGI bridge. ``views.STATE`` is how the tests talk to the views."""
