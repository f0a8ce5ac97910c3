# Gust in a container: one node, memory engine, history in the /var/lib/gust volume.
#   docker build -t gust .
#   docker run -p 8000:8000 -v gust-data:/var/lib/gust \
#     -e GUST_HTTP_API_KEY=... -e GUST_CLIENT_TOKEN_HMAC_SECRET_KEY=... gust
# Configuration: deploy/gust.json is baked in as /etc/gust/gust.json (mount your own over it), and every option
# can be set from the environment as GUST_<PATH> (see the README's Configuration section).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GUST_CONFIG=/etc/gust/gust.json

# A system user without a login shell; it owns only the data directory.
RUN groupadd --system --gid 10001 gust \
    && useradd --system --uid 10001 --gid gust --home-dir /var/lib/gust --shell /usr/sbin/nologin gust \
    && mkdir -p /var/lib/gust /etc/gust \
    && chown gust:gust /var/lib/gust

WORKDIR /opt/gust
# The source tree stays in /opt/gust (the pages' static files live next to the `server` package).
COPY setup.cfg pyproject.toml README.md ./
COPY server ./server
COPY static ./static
RUN pip install --no-cache-dir -e . \
    && python -m server version
COPY deploy/gust.json /etc/gust/gust.json

USER gust
VOLUME ["/var/lib/gust"]
EXPOSE 8000

# Liveness: GET /health on the port that serves it (http_server.internal_port when set, else http_server.port;
# read from the GUST_* environment). With TLS on that port, set http_server.tls_external and an internal_port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; e = os.environ; p = e.get('GUST_HTTP_SERVER_INTERNAL_PORT', '0'); p = p if p not in ('', '0') else e.get('GUST_HTTP_SERVER_PORT', '8000'); urllib.request.urlopen(f'http://127.0.0.1:{p}/health', timeout=4)"]

# SIGTERM drains: clients get 3001 "shutdown" and reconnect. Give it shutdown.timeout (30 s) plus a margin:
# docker stop --time 40 (compose: stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["gust", "serve"]
