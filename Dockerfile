# GNAQ-Rec image: the training job today (the service joins it in the next issue).
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 GNAQ_MODEL_DIR=/app/models
# CPU build of torch first, so the project's torch requirement is already satisfied.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY model ./model
COPY training ./training
COPY service ./service
RUN pip install . && pip install --no-deps "recbole==1.2.1"
VOLUME ["/app/models"]
ENTRYPOINT ["gnaq"]
CMD ["train", "--dataset", "ml-100k", "--method", "gnaq", "--bits", "2", "--no-progress"]
