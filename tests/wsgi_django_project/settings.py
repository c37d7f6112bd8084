"""Settings of the test project: DEBUG off, any host, CSRF protection on, no database."""

SECRET_KEY = "trioserve-tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "wsgi_django_project.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",  # APPEND_SLASH redirects
    "django.middleware.csrf.CsrfViewMiddleware",
]
DATABASES: dict[str, dict[str, str]] = {}
TEMPLATES: list[dict[str, object]] = []
USE_I18N = False
USE_TZ = True
LOGGING_CONFIG = None  # leave the test process's logging alone
