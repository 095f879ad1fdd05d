# Wharf image: runs the broker by default, the operator with `wharf-operator` as the command.
#
#   docker build -t wharf:dev .                                    # official slim Python 3.11 base
#   docker build --network host --build-arg BASE_IMAGE="$(scripts/build-base-image.sh)" -t wharf:dev .
#   docker run --rm -p 127.0.0.1:8883:8883 wharf:dev               # broker with its built-in config
#   docker run --rm wharf:dev wharf-operator --help
#
# In Kubernetes the operator renders each broker's config into a ConfigMap and mounts the certificates from
# Secrets, so the test certificates bundled under /opt/wharf/etc/certs are only used by a bare `docker run`.
ARG BASE_IMAGE=python:3.11-slim

# --- build: a virtualenv with Wharf and its dependencies (wheels only, no compiler needed) ---
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/wharf/venv
WORKDIR /src
# Dependencies first, read from pyproject.toml, so this layer is rebuilt only when they change.
COPY pyproject.toml ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['operator'] + p['optional-dependencies']['cluster']))" \
    > requirements.txt \
    && /opt/wharf/venv/bin/pip install --no-cache-dir -r requirements.txt
COPY README.md ./
COPY broker/ broker/
COPY operator/ operator/
# Not editable: the package is copied into site-packages, so /src is not needed at run time.
# pip itself is removed afterwards, so the final image cannot install anything.
RUN /opt/wharf/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/wharf/venv/bin/python -m pip uninstall --yes pip \
    && /opt/wharf/venv/bin/python -c "import wharf_broker, wharf_operator, nats"

# --- run: the base image plus the virtualenv, as an unprivileged user ---
FROM ${BASE_IMAGE}
ARG WHARF_UID=10001
LABEL org.opencontainers.image.title="wharf" \
      org.opencontainers.image.description="Kubernetes-native MQTT 3.1.1/5.0 broker and its operator" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid "${WHARF_UID}" wharf \
    && useradd --system --uid "${WHARF_UID}" --gid wharf --home-dir /opt/wharf --no-create-home \
       --shell /usr/sbin/nologin wharf
COPY --from=build /opt/wharf/venv /opt/wharf/venv
# Test certificates for a bare `docker run` (the built-in config's ssl/wss listeners); never the CA's key.
COPY etc/certs/server.crt etc/certs/server.key etc/certs/rootCA.crt /opt/wharf/etc/certs/
# The built-in config's durable state ($WHARF_HOME/data); mount a volume here to keep it beyond the container.
RUN install -d -o wharf -g wharf -m 0700 /opt/wharf/data
WORKDIR /opt/wharf
ENV PATH=/opt/wharf/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WHARF_HOME=/opt/wharf
# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER ${WHARF_UID}:${WHARF_UID}
# MQTT over TCP, TLS, WebSocket, secure WebSocket; the admin API.
EXPOSE 1883 8883 8083 8084 18083
CMD ["wharf-broker"]
