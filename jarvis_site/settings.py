"""Django settings for Jarvis: every value comes from the environment or `.env` (see `.env.example`)."""

import os
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    env.read_env(BASE_DIR / ".env", overwrite=False)

# --- Core ---------------------------------------------------------------------------------------

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Put a long random value in .env "
            "(./jarvis up writes one for you), or set DJANGO_DEBUG=true for a throw-away dev key."
        )
    SECRET_KEY = "django-insecure-dev-only-key-do-not-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_q",
    "axes",
    "botapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "botapp.web.security.AdminContentSecurityPolicyMiddleware",
    # Last, as django-axes requires: it turns a refused sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "jarvis_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "jarvis_site.wsgi.application"
ASGI_APPLICATION = "jarvis_site.asgi.application"

# --- Database -----------------------------------------------------------------------------------

# An empty DATABASE_URL (as .env.example has it) means the default too; lower case: not a setting that
# debug pages would show with its password.
database_url = env.str("DATABASE_URL", default="") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}"
DATABASES = {"default": env.db_url_config(database_url)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several writers (bot, web, workers) share one file: WAL lets readers run beside a writer,
    # IMMEDIATE takes the write lock up front so transactions wait instead of failing with
    # "database is locked" half-way through, and the timeout is how long they wait.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # A file has no server to hold connections for: keep them open rather than reconnect (and run the
    # PRAGMAs again) whenever django-q2 or a request closes "old" connections.
    DATABASES["default"]["CONN_MAX_AGE"] = None
    # A file (not the in-memory default) so subprocesses started by tests see the test data; one per
    # test run, so that two runs on one machine do not share it.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / f".test-db-{os.getpid()}.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=0))
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth, i18n, static -------------------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"
# django-axes first: it refuses a locked-out sign-in before any password is checked.
AUTHENTICATION_BACKENDS = ["botapp.web.security.SignInThrottleBackend", "django.contrib.auth.backends.ModelBackend"]

# --- Sign-in throttling (django-axes), on the site's and the admin's login page -----------------

# After this many failed sign-ins for one username from one address, that pair is locked out for a while;
# the attempts are listed in the admin (Axes > Access attempts), where deleting a row unlocks it.
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "botapp.web.security.login_locked_out"
# The address is REMOTE_ADDR only (no django-ipware): uvicorn sets it from X-Forwarded-For when the request
# comes from a proxy in FORWARDED_ALLOW_IPS, and a header read here could be forged by anyone.

# --- HTTPS (behind a TLS-terminating proxy) -----------------------------------------------------

SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=False)
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
# The header in which the proxy says the original request was https, e.g. X-Forwarded-Proto. Set it only
# when a proxy always sets (or strips) that header: otherwise a client could claim https itself.
forwarded_proto_header = env.str("DJANGO_SECURE_PROXY_SSL_HEADER", default="")
if forwarded_proto_header:
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + forwarded_proto_header.upper().replace("-", "_"), "https")

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
# Core and web strings in locale/, the Telegram bot's own in botapp/telegram/locale/.
LOCALE_PATHS = [BASE_DIR / "locale", BASE_DIR / "botapp" / "telegram" / "locale"]
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").is_dir() else []
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- Jarvis: model provider ---------------------------------------------------------------------

OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="") or None
OPENAI_MODEL = env.str("OPENAI_MODEL", default="gpt-4o-mini")
OPENAI_TRANSCRIPTION_MODEL = env.str("OPENAI_TRANSCRIPTION_MODEL", default="whisper-1")
OPENAI_TIMEOUT = env.float("OPENAI_TIMEOUT", default=30.0)
OPENAI_MAX_RETRIES = env.int("OPENAI_MAX_RETRIES", default=2)
# The longest a person waits for the first word before being told the provider is not answering.
OPENAI_FIRST_TOKEN_DEADLINE = env.float("OPENAI_FIRST_TOKEN_DEADLINE", default=50.0)

# --- Jarvis: documents and knowledge bases -----------------------------------------------------

# Empty: documents are searched by words only (for providers without an embeddings endpoint).
OPENAI_EMBEDDING_MODEL = env.str("OPENAI_EMBEDDING_MODEL", default="text-embedding-3-small")
# Vector length asked of models that can shorten theirs (text-embedding-3-*); see README, Documents.
OPENAI_EMBEDDING_DIMENSIONS = env.int("OPENAI_EMBEDDING_DIMENSIONS", default=512)
MAX_DOCUMENT_BYTES = env.int("MAX_DOCUMENT_BYTES", default=20 * 1024 * 1024)
# --- Jarvis: pictures and speech ----------------------------------------------------------------

OPENAI_IMAGE_MODEL = env.str("OPENAI_IMAGE_MODEL", default="gpt-image-1")
# Pictures take far longer than words: the longest one image call may take, in seconds.
OPENAI_IMAGE_TIMEOUT = env.float("OPENAI_IMAGE_TIMEOUT", default=180.0)
OPENAI_TTS_MODEL = env.str("OPENAI_TTS_MODEL", default="gpt-4o-mini-tts")
# Generated pictures and audio go through Django's storage API: files under MEDIA_ROOT by default, or an
# S3-compatible bucket (django-storages) when MEDIA_S3_BUCKET is set, so several web machines share them.
# They are never served from a public URL: the app checks who asks (see botapp.web.views.media.media_file).
MEDIA_ROOT = env.str("MEDIA_ROOT", default="") or str(BASE_DIR / "media")
MEDIA_URL = "/media/"
MEDIA_S3_BUCKET = env.str("MEDIA_S3_BUCKET", default="")
if MEDIA_S3_BUCKET:
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": MEDIA_S3_BUCKET,
            "endpoint_url": env.str("MEDIA_S3_ENDPOINT_URL", default="") or None,
            "region_name": env.str("MEDIA_S3_REGION", default="") or None,
            # Empty: boto3's own chain (AWS_* variables, an instance role, ~/.aws).
            "access_key": env.str("MEDIA_S3_ACCESS_KEY_ID", default="") or None,
            "secret_key": env.str("MEDIA_S3_SECRET_ACCESS_KEY", default="") or None,
            "location": env.str("MEDIA_S3_PREFIX", default="jarvis-media"),
            "default_acl": "private",
            "file_overwrite": False,
        },
    }

# --- Jarvis: conversations and money ------------------------------------------------------------

CONTEXT_TOKEN_BUDGET = env.int("CONTEXT_TOKEN_BUDGET", default=16000)
MAX_MESSAGE_CHARS = env.int("MAX_MESSAGE_CHARS", default=32000)
DEFAULT_DAILY_BUDGET_USD = env.str("DEFAULT_DAILY_BUDGET_USD", default="") or None
DEFAULT_MONTHLY_BUDGET_USD = env.str("DEFAULT_MONTHLY_BUDGET_USD", default="") or None
# Key for encrypting bot tokens at rest; derived from DJANGO_SECRET_KEY when unset.
FIELD_ENCRYPTION_KEY = env.str("FIELD_ENCRYPTION_KEY", default="")

# --- Jarvis: tools ------------------------------------------------------------------------------

# A SearXNG instance with the JSON format enabled, e.g. http://127.0.0.1:8888; empty: no web search.
SEARXNG_URL = env.str("SEARXNG_URL", default="")
# Let tools read private, loopback and link-local addresses (an intranet); off, such addresses are refused.
TOOLS_ALLOW_PRIVATE_URLS = env.bool("TOOLS_ALLOW_PRIVATE_URLS", default=False)
# Tool rounds one answer may take; after the last the model must answer in words. 0: no tools at all.
TOOLS_MAX_ROUNDS = env.int("TOOLS_MAX_ROUNDS", default=5)
# Seconds one tool call (a search, a page, an MCP call) may take.
TOOLS_TIMEOUT = env.float("TOOLS_TIMEOUT", default=20.0)
# MCP servers registered at set-up, comma-separated name=url (streamable HTTP endpoints).
MCP_SERVERS = env.str("MCP_SERVERS", default="")

# --- Jarvis: Telegram ---------------------------------------------------------------------------

TELEGRAM_BOT_TOKEN = env.str("TELEGRAM_BOT_TOKEN", default="")
TELEGRAM_API_BASE_URL = env.str("TELEGRAM_API_BASE_URL", default="https://api.telegram.org").rstrip("/")
TELEGRAM_ALLOWED_USERS = env.str("TELEGRAM_ALLOWED_USERS", default="")
TELEGRAM_WEBHOOK_SECRET = env.str("TELEGRAM_WEBHOOK_SECRET", default="")
ADMIN_TELEGRAM_IDS = env.list("ADMIN_TELEGRAM_IDS", default=[])

# --- Jarvis: web accounts -----------------------------------------------------------------------

# Where the web page is reached, e.g. https://jarvis.example.com: links sent by /web and /link point there.
SITE_URL = env.str("SITE_URL", default="").rstrip("/")
# Anyone may make an account at /accounts/signup/; off: only invitations, /web in Telegram and admins.
SIGNUP_OPEN = env.bool("SIGNUP_OPEN", default=False)
# Email for password resets, as a URL (smtp+tls://user:password@host:587, consolemail://, ...); lower case:
# not a setting debug pages would show with its password.
email_config = env.email_url("EMAIL_URL", default="consolemail://")
EMAIL_BACKEND = email_config["EMAIL_BACKEND"]
EMAIL_HOST = email_config.get("EMAIL_HOST", "")
EMAIL_PORT = email_config.get("EMAIL_PORT") or 25
EMAIL_HOST_USER = email_config.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = email_config.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = email_config.get("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = email_config.get("EMAIL_USE_SSL", False)
if "EMAIL_FILE_PATH" in email_config:
    EMAIL_FILE_PATH = email_config["EMAIL_FILE_PATH"]
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Jarvis <jarvis@localhost>")

# --- Background work (django-q2) ----------------------------------------------------------------

REDIS_URL = env.str("REDIS_URL", default="")
Q_CLUSTER = {
    "name": "jarvis",
    "workers": env.int("Q_WORKERS", default=2),
    "timeout": 300,
    "retry": 360,
    "max_attempts": 3,
    "catch_up": False,
    "label": "Background tasks",
    "sync": env.bool("Q_SYNC", default=False),
}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
# Messages older than this many days are deleted or anonymised by a daily job; 0 keeps them forever.
RETENTION_DAYS = env.int("RETENTION_DAYS", default=0)
RETENTION_MODE = env.str("RETENTION_MODE", default="delete")

# --- Logging ------------------------------------------------------------------------------------

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"redact_secrets": {"()": "botapp.logging.RedactSecretsFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_secrets"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # httpx logs every request URL, and Bot API URLs carry the bot token.
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        # django-axes announces itself at every start of every command; its lockout warnings stay.
        "axes.apps": {"level": "WARNING"},
    },
}
