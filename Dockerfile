# The one image every marketpipe service runs from: `marketpipe <service> --port 8080`.
# Build: docker build -t marketpipe:0.1.0 .
# The full image has the C compiler that the compiled book (marketpipe/book/side.pyx) needs.
FROM python:3.11-bookworm AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY marketpipe ./marketpipe
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
# The root filesystem is read-only in the cluster: no bytecode files written at run time.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /install /usr/local
RUN groupadd --system --gid 10001 marketpipe \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin marketpipe
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["marketpipe"]
CMD ["--help"]
