# GNAQ-Rec: one image for the API (default command) and the training jobs (`gnaq train`, `gnaq retrain`,
# `python -m training.schedule ...`). The builder fills a virtual environment; the final stage copies only it.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# CPU build of torch first, from its own index: the project's torch range is then met without CUDA wheels.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY contracts ./contracts
COPY training ./training
COPY service ./service
COPY cli ./cli
# recbole without dependencies: only its packaged MovieLens-100K file (the embedded default dataset) is used.
RUN pip install ".[train,serve]" && pip install --no-deps "recbole==1.2.1"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    GNAQ_MODEL_DIR=/models GNAQ_DATA_DIR=/data
# /models is owned by the runtime user so that an empty named volume mounted there starts out writable by it.
RUN groupadd --system --gid 10001 gnaq \
    && useradd --system --uid 10001 --gid gnaq --home-dir /app --shell /usr/sbin/nologin gnaq \
    && mkdir -p /app /models /data \
    && chown gnaq:gnaq /app /models
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# slim has no curl: probe liveness with the standard library (urlopen raises, so exits 1, on errors and 4xx/5xx).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["gnaq", "serve", "--host", "0.0.0.0", "--port", "8000"]
