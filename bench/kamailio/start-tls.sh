#!/usr/bin/env bash
# start-tls.sh - Kamailio with SIP over TLS for the TLS step of bench/bench.sh
# (bench/lib/tlsbench.py), in the foreground (exec: this PID becomes Kamailio's main PID,
# which SIGTERM stops). Writes the tls module's tls.cfg into RUN_DIR with the bench's
# certificates, then runs kamailio-tls.cfg next to this script.
#
# Environment: RUN_DIR (required; gets tls.cfg and the control socket), DS_LIST (the
# dispatcher list: `1 sip:127.0.0.1:PORT;transport=tls` lines), PROXY_ADDR (UDP, for the
# readiness OPTIONS), TLS_ADDR (where callers connect), TLS_CERT, TLS_KEY (the proxy's
# certificate), TLS_CA (the CA the gateways' certificates are verified against),
# DS_ALG (4), CHILDREN (1: UDP children and TLS workers), KAMAILIO_MODULES (a module
# directory other than the package's), LOGLEVEL (0).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
: "${RUN_DIR:?}" "${DS_LIST:?}" "${PROXY_ADDR:?}" "${TLS_ADDR:?}" "${TLS_CERT:?}" "${TLS_KEY:?}" "${TLS_CA:?}"
for a in "$PROXY_ADDR" "$TLS_ADDR"; do
  case "$a" in 127.*) ;; *) echo "start-tls.sh: refusing non-loopback address $a" >&2; exit 1 ;; esac
done
mkdir -p "$RUN_DIR"
# The same settings as gdispatch's [tls] and [tls.client] in the same run: TLS 1.2 or
# later; callers are not asked for a certificate; the gateways' certificates must chain
# to the bench CA.
cat > "$RUN_DIR/tls.cfg" <<CFG
[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
certificate = $TLS_CERT
private_key = $TLS_KEY

[client:default]
method = TLSv1.2+
verify_certificate = yes
require_certificate = yes
ca_list = $TLS_CA
CFG
exec kamailio -f "$HERE/kamailio-tls.cfg" -DD -E \
  ${KAMAILIO_MODULES:+-L "$KAMAILIO_MODULES"} \
  -Y "$RUN_DIR" -w "$RUN_DIR" \
  -n "${CHILDREN:-1}" -m "${SHM_MB:-512}" -M "${PKG_MB:-16}" \
  -A "DS_ALG=${DS_ALG:-4}" \
  -A "DS_LIST=\"$DS_LIST\"" \
  -A "CTL_SOCK=\"unix:$RUN_DIR/kamailio_ctl\"" \
  -A "TLS_CFG=\"$RUN_DIR/tls.cfg\"" \
  -A "TCP_CHILDREN=${CHILDREN:-1}" \
  -A "LISTEN_UDP=udp:$PROXY_ADDR" -A "LISTEN_TLS=tls:$TLS_ADDR" \
  -A "LOGLEVEL=${LOGLEVEL:-0}"
