# Wharf image: runs the broker by default, the operator with `wharf-operator` as the command.
#
#   docker build -t wharf:dev .                                    # official slim Python 3.11 base
#   docker build --network host --build-arg BASE_IMAGE="$(scripts/build-base-image.sh)" -t wharf:dev .
#   docker run --rm -p 127.0.0.1:8883:8883 -v wharf-state:/var/lib/wharf wharf:dev   # broker, built-in config
#   docker run --rm wharf:dev wharf-operator --help
#
# The image holds no private key. With its built-in config the broker generates a local CA, a server and a client
# certificate on its first start in $WHARF_HOME/certs (/var/lib/wharf/certs, private to the wharf user; a volume
# there keeps them across containers) and logs where they are. In Kubernetes the operator renders each broker's
# config into a ConfigMap and mounts the certificates from Secrets: nothing is generated there.
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
# The state directory (WHARF_HOME): the only place the broker writes, owned by the wharf user, 0700.
RUN groupadd --system --gid "${WHARF_UID}" wharf \
    && useradd --system --uid "${WHARF_UID}" --gid wharf --home-dir /var/lib/wharf --no-create-home \
       --shell /usr/sbin/nologin wharf \
    && install -d -o "${WHARF_UID}" -g "${WHARF_UID}" -m 0700 /var/lib/wharf
COPY --from=build /opt/wharf/venv /opt/wharf/venv
WORKDIR /opt/wharf
ENV PATH=/opt/wharf/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WHARF_HOME=/var/lib/wharf
# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER ${WHARF_UID}:${WHARF_UID}
# MQTT over TCP, TLS, WebSocket, secure WebSocket; the admin API.
EXPOSE 1883 8883 8083 8084 18083
CMD ["wharf-broker"]
