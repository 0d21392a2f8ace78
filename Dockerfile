# syntax=docker/dockerfile:1
# One image for web (gunicorn), worker and beat (celery); the `docs` target adds MkDocs.
FROM python:3.11-slim AS app

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --gid 1000 app && useradd --uid 1000 --gid app --create-home app
WORKDIR /app

COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY --chown=app:app . .
# Static files are collected at build time (WhiteNoise serves them); the key is build-only.
RUN SECRET_KEY=collectstatic-build-only python manage.py collectstatic --noinput \
    && mkdir -p var/media && chown -R app:app var

USER app
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
CMD ["gunicorn", "abtest.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]

FROM app AS docs
USER root
COPY requirements-dev.txt ./
RUN pip install -r requirements-dev.txt
USER app
EXPOSE 8001
CMD ["mkdocs", "serve", "--dev-addr", "0.0.0.0:8001"]
