#!/usr/bin/env bash
# The HTML attestation report in a real browser, and the JSON report checked
# without hsm-kms:
#
#   scripts/test-attest-html.sh
#
# Installs chromium, jq, openssl, softhsm2 and opensc when missing (sudo when
# not root), builds the debug binary, makes a token and a store under a temp
# dir, runs `hsm-kms init`, serves on 127.0.0.1 to make NAVER keys (AES256,
# convergent AES256, RSA2048, ECDSA, one rotated) and NHN keys (an
# export-policy key store and a plain one), then:
#   - `hsm-kms attest --format html`, rendered by headless Chromium
#     (`--dump-dom`): the rendered page must lead with "N key versions, M
#     objects, 0 flags" and hold the table; a screenshot (1280x900) goes to
#     $SCREENSHOT (default target/attest-html/attest-example.png; the one in
#     docs/ was made with SCREENSHOT=docs/attest-example.png);
#   - `hsm-kms attest --format json`, checked with `hsm-kms attest verify`
#     and independently with jq and openssl (the signed bytes are
#     `jq -jcS .report`, the signature DER ECDSA over their SHA-256);
#   - an extractable key imported with pkcs11-tool and labelled like a key
#     version: the next report shows it flagged, in red, in the browser too.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install chromium fonts-dejavu-core jq openssl softhsm2 opensc curl
command -v cc >/dev/null 2>&1 || apt_install build-essential
command -v pkg-config >/dev/null 2>&1 || apt_install pkg-config
need_cargo
cd "$ROOT"
cargo build --all-features --quiet
BIN="$ROOT/target/debug/hsm-kms"
OUT="$ROOT/target/attest-html"
SCREENSHOT="${SCREENSHOT:-$OUT/attest-example.png}"
mkdir -p "$OUT" "$(dirname "$SCREENSHOT")"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/tokens"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK" >"$WORK/softhsm2.conf"
export SOFTHSM2_CONF="$WORK/softhsm2.conf"
MODULE="$(softhsm_module)"
softhsm2-util --init-token --free --label hsm-kms --so-pin 12345678 --pin 1234 >/dev/null
for v in $(env | awk -F= '/^HSM_KMS_/ {print $1}'); do unset "$v"; done
export HSM_KMS_PIN=1234 HSM_KMS_HSM_MODULE="$MODULE" HSM_KMS_STORE_DATA_DIR="$WORK/data" \
    HSM_KMS_LOG_LEVEL=warn HSM_KMS_LOG_FORMAT=text HSM_KMS_SERVER_LISTEN=127.0.0.1:0

out="$("$BIN" init 2>/dev/null)"
AK="$(printf '%s\n' "$out" | sed -n 's/^access_key=//p')"
SK="$(printf '%s\n' "$out" | sed -n 's/^secret_key=//p')"
"$BIN" admin nhn create-project shop --require-user-access-key false >/dev/null
APPKEY="$("$BIN" admin nhn create-appkey --project shop | sed -n 's/^appkey=//p')"
"$BIN" admin nhn create-key-store --project shop --name exp --allow-export >/dev/null
"$BIN" admin nhn create-key-store --project shop --name plain >/dev/null

"$BIN" serve --addr-file "$WORK/addr" >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do [ -s "$WORK/addr" ] && break; sleep 0.1; done
[ -s "$WORK/addr" ] || die "hsm-kms serve did not start: $(cat "$WORK/serve.log")"
URL="http://$(cat "$WORK/addr")"

ncp() { # ncp METHOD PATH [JSON]: a NAVER API 2.0 call signed with signature v2
    local ts sig
    ts=$(date +%s%3N)
    sig=$(printf '%s %s\n%s\n%s' "$1" "$2" "$ts" "$AK" | openssl dgst -sha256 -hmac "$SK" -binary | base64 -w0)
    curl -sf -X "$1" "$URL$2" -H "x-ncp-apigw-timestamp: $ts" -H "x-ncp-iam-access-key: $AK" \
        -H "x-ncp-apigw-signature-v2: $sig" -H 'content-type: application/json' ${3:+--data "$3"}
}
nhn() { # nhn PATH JSON: an NHN management call (the project needs no User Access Key)
    curl -sf -X POST "$URL/keymanager/v1.2/appkey/$APPKEY$1" -H 'content-type: application/json' --data "$2"
}
TAG=""
for spec in 'orders:AES256:false' 'tokens:AES256:true' 'invoices:RSA2048:false' 'receipts:ECDSA:false'; do
    IFS=: read -r name type conv <<<"$spec"
    tag="$(ncp POST /kms/v1/keys "{\"keyName\":\"$name\",\"keyType\":\"$type\",\"isConvergent\":$conv}" | jq -r .data.keyTag)"
    [ -n "$tag" ] && [ "$tag" != null ] || die "NAVER key $name not created"
    TAG="${TAG:-$tag}"
done
ncp POST "/kms/v1/keys/$TAG/rotate" >/dev/null
nhn /keys/symmetric-keys/create '{"keyStoreName":"exp","name":"exportable"}' | jq -e '.header.isSuccessful' >/dev/null
nhn /keys/symmetric-keys/create '{"keyStoreName":"plain","name":"payments"}' | jq -e '.header.isSuccessful' >/dev/null
nhn /keys/asymmetric-keys/create '{"keyStoreName":"plain","name":"signing"}' | jq -e '.header.isSuccessful' >/dev/null
nhn /keys/secrets/create '{"keyStoreName":"plain","name":"db-password","secretValue":"s3cret"}' | jq -e '.header.isSuccessful' >/dev/null
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""

# chromium_text HTML: the rendered DOM with the tags stripped.
chromium_text() {
    chromium --headless --no-sandbox --disable-gpu --dump-dom "file://$1" 2>/dev/null | sed -e 's/<[^>]*>/ /g'
}

log "clean installation: HTML report in headless Chromium"
"$BIN" attest --all --format html --out "$OUT/report.html"
text="$(chromium_text "$OUT/report.html")"
grep -q '9 key versions, 19 objects, 0 flags' <<<"$text" || die "summary not rendered: $(head -c 2000 <<<"$text")"
grep -q 'no disagreement between the token and the store' <<<"$text" || die "verdict not rendered"
grep -q 'CKA_ID' <<<"$text" || die "table not rendered"
grep -q "hsm-kms/$TAG/v2" <<<"$text" || die "the rotated version is not in the table"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,900 \
    --screenshot="$SCREENSHOT" "file://$OUT/report.html" 2>/dev/null
[ -s "$SCREENSHOT" ] || die "no screenshot"
log "screenshot: $SCREENSHOT"

log "JSON report: hsm-kms attest verify, then jq + openssl alone"
"$BIN" attest --all --out "$OUT/report.json" 2>/dev/null
"$BIN" attest public-key --out "$OUT/attest.pem"
"$BIN" attest verify "$OUT/report.json" --public-key "$OUT/attest.pem"
jq -jcS .report "$OUT/report.json" >"$WORK/signed-bytes"
jq -r .signature.value "$OUT/report.json" | base64 -d >"$WORK/sig.der"
openssl dgst -sha256 -verify "$OUT/attest.pem" -signature "$WORK/sig.der" "$WORK/signed-bytes"
[ "$(openssl pkey -pubin -in "$OUT/attest.pem" -outform der | sha256sum | cut -d' ' -f1)" = \
  "$(jq -r .signature.publicKeySha256 "$OUT/report.json")" ] || die "publicKeySha256 is not the key's SPKI hash"

log "an extractable key imported behind the service's back"
head -c 32 /dev/urandom >"$WORK/aes.bin"
pkcs11-tool --module "$MODULE" --token-label hsm-kms --login --pin 1234 --write-object "$WORK/aes.bin" \
    --type secrkey --key-type AES:32 --label "hsm-kms/$TAG/v9" --id 0badc0de --extractable >/dev/null 2>&1
"$BIN" attest --format html --out "$OUT/flagged.html" 2>/dev/null
text="$(chromium_text "$OUT/flagged.html")"
grep -Eq '9 key versions, 20 objects, [1-9][0-9]* flags' <<<"$text" || die "flags not counted: $(grep -o '[0-9]* key versions[^.]*' <<<"$text")"
grep -q 'not in the store' <<<"$text" || die "the unknown object is not shown"
for code in unknown extractable not-local; do
    grep -q "$code" <<<"$text" || die "flag $code not shown"
done
log "attest HTML and offline checks passed"
