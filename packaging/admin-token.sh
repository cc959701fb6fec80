#!/bin/sh
# Prints a token for the admin API (HS256, scopes "read write") signed with
# the secret in SECRET_FILE, valid for SECONDS (default 3600). The recipe is
# docs/admin-api.md's, "Minting an HS256 token with standard tools".
#   packaging/admin-token.sh conf.d/admin.secret
#   packaging/admin-token.sh /etc/helios/admin.secret 86400
set -eu
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: admin-token.sh SECRET_FILE [SECONDS]" >&2
    exit 2
fi
SECRET_FILE=$1
ttl=${2:-3600}
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
h=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
p=$(printf '{"sub":"%s","scope":"read write","exp":%d}' "$(id -un)" $(($(date +%s) + ttl)) | b64url)
s=$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -hmac "$(cat "$SECRET_FILE")" -binary | b64url)
echo "$h.$p.$s"
