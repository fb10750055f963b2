#!/usr/bin/env bash
# Bring up the whole edge on this machine, in the foreground, on loopback:
#
#   viewers -> nginx https://127.0.0.1:8443 -> Varnish :6081 -> livecam :8080 <- camera
#
# usage: deploy/run-edge.sh [livecam options, e.g. --demo]
# Ctrl-C stops all three. Needs varnish, nginx and openssl (apt install varnish nginx).
# Ports: LIVECAM_PORT (8080), VARNISH_PORT (6081), HTTPS_PORT (8443), HTTP_PORT (8088).
# TLS: TLS_CERT and TLS_KEY, or a throwaway self-signed certificate for 127.0.0.1.
set -euo pipefail

cd "$(dirname "$0")/.."
LIVECAM_PORT=${LIVECAM_PORT:-8080}
VARNISH_PORT=${VARNISH_PORT:-6081}
HTTPS_PORT=${HTTPS_PORT:-8443}
HTTP_PORT=${HTTP_PORT:-8088}
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PATH=$PATH:/usr/sbin:/sbin

for tool in varnishd nginx openssl curl; do
    command -v "$tool" >/dev/null || { echo "run-edge: $tool is missing (apt install varnish nginx openssl curl)" >&2; exit 1; }
done

RUN=$(mktemp -d /tmp/livecam-edge.XXXXXX)
chmod 755 "$RUN"  # varnishd's and nginx's workers run as their own users
pids=()
stop() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$RUN"
}
trap stop EXIT INT TERM

wait_for() {  # URL: poll until it answers, for at most 20 s
    for _ in $(seq 200); do
        if curl -fsk -o /dev/null "$1"; then return 0; fi
        sleep 0.1
    done
    echo "run-edge: $1 did not answer" >&2
    exit 1
}

# 1. livecam, the origin
"$PYTHON" livecam.py --host 127.0.0.1 --port "$LIVECAM_PORT" --no-access-log "$@" &
pids+=($!)
wait_for "http://127.0.0.1:$LIVECAM_PORT/status"

# 2. Varnish, in the foreground with its own working directory
sed "s/\.port = \"8080\";/.port = \"$LIVECAM_PORT\";/" deploy/varnish.vcl > "$RUN/livecam.vcl"
varnishd -F -n "$RUN/varnish" -a "127.0.0.1:$VARNISH_PORT" -f "$RUN/livecam.vcl" \
    -s malloc,256m -T none -p pipe_timeout=3600 &
pids+=($!)
wait_for "http://127.0.0.1:$VARNISH_PORT/status"

# 3. nginx with TLS in front of Varnish
if [[ -z ${TLS_CERT:-} ]]; then
    TLS_CERT=$RUN/cert.pem TLS_KEY=$RUN/key.pem
    openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=127.0.0.1 \
        -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
        -keyout "$TLS_KEY" -out "$TLS_CERT" 2>/dev/null
fi
sed -e "s|server 127.0.0.1:6081;|server 127.0.0.1:$VARNISH_PORT;|" \
    -e "s|listen 443 ssl http2;|listen 127.0.0.1:$HTTPS_PORT ssl http2;|" \
    -e "s|listen 80;|listen 127.0.0.1:$HTTP_PORT;|" \
    -e "/listen \[::\]/d" \
    -e "s|return 301 https://\$host\$request_uri;|return 301 https://\$host:$HTTPS_PORT\$request_uri;|" \
    -e "s|/etc/ssl/livecam/fullchain.pem|$TLS_CERT|" \
    -e "s|/etc/ssl/livecam/privkey.pem|$TLS_KEY|" \
    deploy/nginx-tls.conf > "$RUN/livecam.conf"
cat > "$RUN/nginx.conf" <<EOF
worker_processes auto;
error_log $RUN/nginx-error.log warn;
pid $RUN/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $RUN/client_body;
    proxy_temp_path $RUN/proxy;
    fastcgi_temp_path $RUN/fastcgi;
    uwsgi_temp_path $RUN/uwsgi;
    scgi_temp_path $RUN/scgi;
    include $RUN/livecam.conf;
}
EOF
nginx -p "$RUN" -c "$RUN/nginx.conf" -e "$RUN/nginx-error.log" -g 'daemon off;' &
pids+=($!)
wait_for "https://127.0.0.1:$HTTPS_PORT/status"

cat <<EOF
run-edge: up. Ctrl-C stops everything.
  viewers:  https://127.0.0.1:$HTTPS_PORT/   (TLS -> Varnish -> livecam)
            http://127.0.0.1:$VARNISH_PORT/    (Varnish -> livecam)
  origin:   http://127.0.0.1:$LIVECAM_PORT/    (a camera uploads here)
  counters: varnishstat -n $RUN/varnish -1 -f MAIN.backend_req -f MAIN.cache_hit -f MAIN.busy_sleep
EOF
wait -n "${pids[@]}"
echo "run-edge: a process exited; stopping" >&2
