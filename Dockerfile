# The ormb storage initializer image, for KServe and Seldon Core init containers:
#   docker build -t registry.example.com/ormb/storage-initializer:0.1.0 .
# KServe and Seldon run it as:  ormb-storage-initializer SRC_URI DEST_DIR
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && rm -rf /src
# No shell tools needed; run as an unprivileged user. The cache is never used by the initializer,
# but ORMB_HOME must be writable if credentials come from 'ormb login' state.
RUN useradd --uid 1000 --create-home ormb
USER 1000
ENV ORMB_HOME=/home/ormb/.ormb ORMB_NO_PROGRESS=1
ENTRYPOINT ["ormb-storage-initializer"]
