#!/bin/sh
# A private certificate authority and the Kafka broker's TLS certificate, for
# docker-compose.secure.yml: writes ca.pem (what clients trust), broker.pem (the broker's
# private key and certificate, Kafka's PEM keystore) and ca-key.pem (keep it offline) into
# the directory given (default: deploy/secure/certs). Idempotent: an existing CA is kept, so
# clients that trust it keep working when the broker's certificate is made again.
#
#   deploy/secure/make-certs.sh [DIR] [BROKER_HOST ...]
#
# The broker certificate names every BROKER_HOST (default: kafka, the compose service) plus
# localhost and 127.0.0.1; clients check the name they connect to against it.
set -eu
dir=${1:-$(dirname "$0")/certs}
[ $# -gt 0 ] && shift
hosts=${*:-kafka}
mkdir -p "$dir"
umask 077
if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/ca-key.pem" ]; then
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ca-key.pem"
    openssl req -x509 -new -key "$dir/ca-key.pem" -sha256 -days 3650 \
        -subj "/CN=Steplog Kafka CA" -out "$dir/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi
names="DNS:localhost,IP:127.0.0.1"
for host in $hosts; do names="DNS:$host,$names"; done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Kafka's PEM keystore takes an unencrypted PKCS#8 key (genpkey's output) before the certificate.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/key.pem"
openssl req -new -key "$work/key.pem" -subj "/CN=$(echo "$hosts" | cut -d' ' -f1)" -out "$work/csr.pem"
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$names" > "$work/ext"
openssl x509 -req -in "$work/csr.pem" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
    -CAcreateserial -CAserial "$work/ca.srl" -days 825 -sha256 -extfile "$work/ext" \
    -out "$work/cert.pem"
cat "$work/key.pem" "$work/cert.pem" > "$dir/broker.pem"
# The broker runs as another user in its container: it must read its keystore; ca.pem is public.
chmod 644 "$dir/ca.pem" "$dir/broker.pem"
echo "certificates in $dir: ca.pem (clients trust it), broker.pem (the broker's key and certificate for: $hosts)"
