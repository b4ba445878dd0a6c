# accelmon image: the daemon, the agent and the demo (the seeded vCenter simulator is compiled
# at build time from Debian's Go and govmomi packages, so the demo starts without network).
#
#   docker build -t accelmon .
#   docker run --rm -p 9836:9836 -e ACCELMON_DEMO_BIND=0.0.0.0 accelmon            # the demo
#   docker run --rm -v /etc/accelmon:/etc/accelmon:ro -v accelmon-data:/var/lib/accelmon \
#       accelmon --config /etc/accelmon/accelmon.toml --data-dir /var/lib/accelmon run   # production
FROM debian:bookworm-slim

ARG DEBIAN_FRONTEND=noninteractive
# python3 (3.11 on bookworm); Go + govmomi build the vCenter simulator; prometheus: the demo's own server
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
      golang-go golang-github-vmware-govmomi-dev prometheus \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --system --home-dir /var/lib/accelmon --shell /usr/sbin/nologin accelmon \
 && install -d -o accelmon -g accelmon -m 0750 /var/lib/accelmon

WORKDIR /opt/accelmon/src
COPY pyproject.toml setup.py README.md ./
COPY accelmon ./accelmon
COPY collector ./collector
COPY analytics ./analytics
COPY deploy/prometheus ./deploy/prometheus
RUN python3 -m venv /opt/accelmon/venv \
 && /opt/accelmon/venv/bin/pip install --no-cache-dir /opt/accelmon/src

# Compile the simulator once, into a cache the demo user can read (the data dir is wiped per demo).
ENV ACCELMON_CACHE_DIR=/opt/accelmon/cache \
    GOCACHE=/tmp/go-build \
    PATH=/opt/accelmon/venv/bin:$PATH
RUN /opt/accelmon/venv/bin/python -c "from accelmon.sim.vcsim import build; print(build())" \
 && rm -rf /tmp/go-build && chmod -R a+rX /opt/accelmon/cache

USER accelmon
WORKDIR /var/lib/accelmon
VOLUME ["/var/lib/accelmon"]
EXPOSE 9836
ENTRYPOINT ["/opt/accelmon/venv/bin/accelmon"]
CMD ["--data-dir", "/var/lib/accelmon", "demo"]
