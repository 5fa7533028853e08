# corral serving the bundled example app; see etc/kubernetes/ for the pod around it.
#   docker build -t corral-hello . && docker run -p 8000:8000 -p 9100:9100 corral-hello
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY daemon ./daemon
COPY server_core ./server_core
RUN pip install .
COPY examples ./examples

RUN groupadd --system --gid 10001 corral \
    && useradd --system --uid 10001 --gid corral --home-dir /app --shell /usr/sbin/nologin corral
USER 10001:10001

# 8000: the app; 9100: /metrics, /livez, /readyz (--metrics-bind).
EXPOSE 8000 9100
# Exec form: corral is PID 1, receives the kubelet's TERM itself and reaps orphans.
ENTRYPOINT ["corral"]
CMD ["examples.hello:app", "--host", "0.0.0.0", "--port", "8000", "--metrics-bind", "0.0.0.0:9100"]
