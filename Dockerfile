# calico/node in Python: Felix, confd and BIRD under supervisord, started by `calico-node`.
#
#   docker build -t calico/node .                      # pip installs from PyPI
#   docker build --build-arg WHEELS=local -t calico/node <ctx>   # offline: <ctx>/wheels holds every wheel
#
# Run on a real host (see README "Running on real hosts"):
#   docker run -d --name calico-node --net=host --cap-add NET_ADMIN --cap-add NET_RAW --cap-add SYS_ADMIN \
#     -e ETCD_ENDPOINTS=http://<etcd>:2379 -e IP=<host ip> \
#     -v /var/log/calico:/var/log/calico -v /var/run/calico:/var/run/calico calico/node
# The CNI plugins `calico` and `calico-ipam` are in the image too; `calico-install-cni` copies them and a
# conflist into a runtime's directories (README "CNI").
FROM debian:bookworm-slim

# "local": install only from the wheels in the build context's wheels/ (built on the
# build host with `pip wheel -w <ctx>/wheels .`); empty: install from PyPI.
ARG WHEELS=""

ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/calico/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    CALICO_SUPERVISOR_TEMPLATES=/etc/calico/supervisor

# Never start daemons from package scripts during the build (BIRD's postinst would).
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
 && apt-get update \
 && apt-get install -y --no-install-recommends bird iptables ipset iproute2 conntrack python3 python3-venv \
      ca-certificates procps \
 && rm -rf /var/lib/apt/lists/* \
 && rm -f /etc/bird/*.conf

COPY . /src
RUN python3 -m venv /opt/calico/venv \
 && if [ "$WHEELS" = "local" ]; then \
      /opt/calico/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-index \
        --find-links /src/wheels calico-node-py; \
    else \
      /opt/calico/venv/bin/pip install --no-cache-dir --disable-pip-version-check /src; \
    fi \
 && mkdir -p /etc/calico/supervisor/services /var/log/calico /var/run/calico \
 && cp /src/supervisord.conf /etc/calico/supervisor/ \
 && cp /src/services/*.conf /etc/calico/supervisor/services/ \
 && ln -sf /var/run/calico/supervisord.conf /etc/supervisord.conf \
 && rm -rf /src \
 && calico-node --help >/dev/null \
 && CNI_COMMAND=VERSION calico </dev/null | grep -q supportedVersions \
 && calico-install-cni --help >/dev/null

# Logs (<dir>/<service>/current, rotated) and the run dir (supervisord's socket,
# BIRD control sockets) are meant to be shared with the host.
VOLUME ["/var/log/calico", "/var/run/calico"]

HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 CMD ["calico-node", "-ready"]

ENTRYPOINT ["calico-node"]
