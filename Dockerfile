# GNAQ-Rec: two images from one file.
#   api     (default target): `gnaq serve` with the [serve] extra only: no matplotlib, tqdm or recbole.
#   trainer: the jobs (`gnaq train`, `gnaq retrain`, `python -m training.schedule ...`) with [train,serve] and
#            recbole's packaged MovieLens-100K; its health check asks the nightly scheduler whether it is alive.
# Both need torch (the service folds new users in with it); its source is a build argument whose default is the
# PyTorch CPU index, e.g. --build-arg TORCH_PIP_ARGS="--find-links http://127.0.0.1:8765/" where that is unreachable.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS torch
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# CPU build of torch first: the project's torch range is then met without CUDA wheels. Its C++ headers, CMake
# files and C++ test binaries (about 0.2 GB) serve extension builds and torch's own tests, never a run: left out.
RUN pip install "torch==2.13.0" ${TORCH_PIP_ARGS} \
    && cd /opt/venv/lib/python3.11/site-packages/torch && rm -rf include share test
WORKDIR /src
COPY pyproject.toml ./
# The dependencies of the extras, as a requirements file: installed before the sources are copied, so that a
# change of code rebuilds only the last, small layer (Docker's layer cache keeps torch and the dependencies).
RUN for extras in serve train,serve; do python -c "import sys, tomllib; \
p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + [d for e in sys.argv[1].split(',') for d in p['optional-dependencies'][e]]))" \
    "$extras" >"${extras%%,*}.txt"; done

FROM ${PYTHON_IMAGE} AS sources
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY contracts ./contracts
COPY training ./training
COPY service ./service
COPY cli ./cli

FROM torch AS api-venv
RUN pip install -r serve.txt
COPY --from=sources /src /src
RUN pip install --no-deps .

FROM torch AS trainer-venv
# recbole without dependencies: only its packaged MovieLens-100K file (the embedded default dataset) is used.
RUN pip install -r train.txt && pip install --no-deps "recbole==1.2.1"
COPY --from=sources /src /src
RUN pip install --no-deps .

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    GNAQ_MODEL_DIR=/models GNAQ_DATA_DIR=/data
# /models is owned by the runtime user so that an empty named volume mounted there starts out writable by it.
RUN groupadd --system --gid 10001 gnaq \
    && useradd --system --uid 10001 --gid gnaq --home-dir /app --shell /usr/sbin/nologin gnaq \
    && mkdir -p /app /models /data \
    && chown gnaq:gnaq /app /models
WORKDIR /app
USER 10001:10001

FROM runtime AS trainer
COPY --from=trainer-venv /opt/venv /opt/venv
ENV GNAQ_HEARTBEAT_FILE=/tmp/gnaq-schedule.heartbeat
HEALTHCHECK --interval=5s --timeout=5s --start-period=20s --retries=3 CMD ["python", "-m", "training.heartbeat"]
CMD ["python", "-m", "training.schedule", "--", "gnaq", "retrain"]

FROM runtime AS api
COPY --from=api-venv /opt/venv /opt/venv
EXPOSE 8000
# slim has no curl: probe liveness with the standard library (urlopen raises, so exits 1, on errors and 4xx/5xx).
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["gnaq", "serve", "--host", "0.0.0.0", "--port", "8000"]
