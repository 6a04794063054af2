#!/bin/sh
# airlock: configures pip, npm, Go, NuGet and the Pulumi CLI of the current user for this
# appliance's mirrors, and makes them trust the appliance's CA.
#
# Usage: sh airlock-setup.sh [--ca-sha256 FINGERPRINT] [--system] [BASE_URL]
#    or: curl -fsS <mirror>/setup/airlock-setup.sh | sh -s -- [--ca-sha256 FINGERPRINT] [--system]
#
# BASE_URL: the mirror; by default $AIRLOCK_MIRROR, else the URL this script was served from.
# FINGERPRINT (or $AIRLOCK_CA_SHA256): the SHA-256 of the appliance's CA as its console banner
#   prints it ("ca sha256: AB:CD:..."; case and colons do not matter). The script downloads
#   BASE_URL/ca.crt and, when the fingerprint differs, refuses and configures nothing. Over
#   https the fingerprint is required: that one download cannot check the server's certificate
#   (the CA is what it fetches), so only the fingerprint vouches for it. Over http it is
#   optional; without it the script prints the CA's fingerprint to compare with the banner.
# --system: as root, also adds the CA to the system trust store (update-ca-certificates, or
#   p11-kit's `trust anchor`; on macOS it prints the `security` command to run). Without it
#   nothing outside the user's HOME changes, even as root.
#
# The CA goes to ~/.config/airlock/ca.crt; pip and npm use ~/.config/airlock/ca-bundle.pem (the
# system's bundle, read now, plus the CA: pip's `cert` and npm's `cafile` replace their default
# list); Go, the Pulumi CLI and node get SSL_CERT_FILE and NODE_EXTRA_CA_CERTS from
# ~/.pulumi/airlock-env.sh, sourced from ~/.profile. Run it again after the system's CAs change.
#
# This script is only as trustworthy as the way it reached you. On a network you do not trust:
#   curl -fsSo airlock-ca.crt http://<appliance>/ca.crt
#   openssl x509 -noout -fingerprint -sha256 -in airlock-ca.crt    # compare with the banner
#   curl -fsS --cacert airlock-ca.crt https://mirror.<domain>/setup/airlock-setup.sh \
#     | AIRLOCK_CA_SHA256=<fingerprint> sh
set -eu

usage() {
  echo "usage: airlock-setup.sh [--ca-sha256 FINGERPRINT] [--system] [BASE_URL]" >&2
  exit 2
}
fail() {
  echo "airlock-setup: $*" >&2
  exit 1
}

base="${AIRLOCK_MIRROR:-@AIRLOCK_MIRROR_URL@}"
want="${AIRLOCK_CA_SHA256:-}"
system=no
positional=no
while [ $# -gt 0 ]; do
  case "$1" in
    --ca-sha256) [ $# -ge 2 ] || usage; want="$2"; shift 2 ;;
    --ca-sha256=*) want="${1#*=}"; shift ;;
    --system) system=yes; shift ;;
    -*) usage ;;
    *) [ "$positional" = no ] || usage; base="$1"; positional=yes; shift ;;
  esac
done
base="${base%/}"
case "$base" in
  http://*|https://*) ;;
  *) echo "airlock-setup: '$base' is not an http(s) URL" >&2; exit 2 ;;
esac
hostport="${base#*://}"; hostport="${hostport%%/*}"; host="${hostport%:*}"
config="${XDG_CONFIG_HOME:-$HOME/.config}"
airlock="$config/airlock"
case "$(uname -s)" in
  Darwin) goconfig="$HOME/Library/Application Support/go" ;;
  *) goconfig="$config/go" ;;
esac

# A fingerprint as hex digits only, upper case; "AB:CD:..." again with `banner_format`.
normalize() { printf '%s' "$1" | tr -d ': \t\r\n' | tr 'abcdef' 'ABCDEF'; }
banner_format() { printf '%s' "$1" | sed 's/../&:/g; s/:$//'; }

if [ -n "$want" ]; then
  want="$(normalize "$want")"
  case "$want" in
    *[!0-9A-F]*) want=invalid ;;
  esac
  [ "${#want}" -eq 64 ] || { echo "airlock-setup: the CA fingerprint must be 32 hex bytes, as the banner shows it (ca sha256: AB:CD:...)" >&2; exit 2; }
else
  case "$base" in
    https://*) fail "over https the CA's fingerprint is required, since nothing else can vouch for the CA this script downloads: pass --ca-sha256 FINGERPRINT or set AIRLOCK_CA_SHA256, copied from the appliance's console banner (ca sha256: ...). Nothing was configured." ;;
  esac
fi
if [ "$system" = yes ]; then
  [ "$(id -u)" -eq 0 ] || fail "--system changes the system trust store: run it as root. Nothing was configured."
  if command -v update-ca-certificates >/dev/null 2>&1; then
    store=debian
  elif command -v trust >/dev/null 2>&1; then
    store=p11kit
  elif [ "$(uname -s)" = Darwin ]; then
    store=macos
  else
    fail "--system: neither update-ca-certificates nor trust (p11-kit) is installed. Nothing was configured."
  fi
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
trap 'exit 1' INT TERM

# The CA: over https with certificate checks off for this one download only; the fingerprint,
# not TLS, is what vouches for it.
case "$base" in https://*) insecure=yes ;; *) insecure= ;; esac
if command -v curl >/dev/null 2>&1; then
  curl -fsS --max-time 60 ${insecure:+--insecure} -o "$tmp/download" "$base/ca.crt" ||
    fail "cannot download $base/ca.crt. Nothing was configured."
elif command -v wget >/dev/null 2>&1; then
  wget -q -T 60 ${insecure:+--no-check-certificate} -O "$tmp/download" "$base/ca.crt" ||
    fail "cannot download $base/ca.crt. Nothing was configured."
else
  fail "neither curl nor wget is installed. Nothing was configured."
fi
# Exactly one certificate, and only it is kept: nothing unverified rides along into a trust store.
tr -d '\r' < "$tmp/download" > "$tmp/ca.txt"
count="$(grep -c -x -e '-----BEGIN CERTIFICATE-----' "$tmp/ca.txt" || true)"
[ "$count" = 1 ] || fail "$base/ca.crt holds $count PEM certificates, not one. Nothing was configured."
sed -n '/^-----BEGIN CERTIFICATE-----$/,/^-----END CERTIFICATE-----$/p' "$tmp/ca.txt" > "$tmp/ca.crt"
tail -n 1 "$tmp/ca.crt" | grep -q -x -e '-----END CERTIFICATE-----' ||
  fail "$base/ca.crt is cut short. Nothing was configured."
# The SHA-256 of the certificate's DER, as `openssl x509 -fingerprint -sha256` and the banner
# print it.
if command -v openssl >/dev/null 2>&1; then
  got="$(openssl x509 -noout -fingerprint -sha256 -in "$tmp/ca.crt" 2>/dev/null)" ||
    fail "$base/ca.crt is not a valid certificate. Nothing was configured."
  got="${got#*=}"
else
  sed '1d;$d' "$tmp/ca.crt" > "$tmp/ca.b64"
  { base64 -d "$tmp/ca.b64" 2>/dev/null || base64 -D -i "$tmp/ca.b64"; } > "$tmp/ca.der" ||
    fail "$base/ca.crt is not valid base64. Nothing was configured."
  if command -v sha256sum >/dev/null 2>&1; then
    got="$(sha256sum < "$tmp/ca.der")"
  elif command -v shasum >/dev/null 2>&1; then
    got="$(shasum -a 256 < "$tmp/ca.der")"
  else
    fail "none of openssl, sha256sum or shasum is installed to check the CA. Nothing was configured."
  fi
  got="${got%% *}"
fi
got="$(normalize "$got")"
fingerprint="$(banner_format "$got")"
if [ -n "$want" ]; then
  [ "$got" = "$want" ] ||
    fail "the CA served at $base/ca.crt has the SHA-256 fingerprint $fingerprint, not $(banner_format "$want"): refusing it (is something else answering at $hostport?). Nothing was configured."
  echo "ca: $base/ca.crt has the expected fingerprint $fingerprint"
else
  echo "ca: $base/ca.crt has the SHA-256 fingerprint"
  echo "      $fingerprint"
  echo "    compare it with the appliance's console banner (ca sha256: ...); if they differ, do not use"
  echo "    this configuration, and run the script again with --ca-sha256 FINGERPRINT."
fi

# Writes stdin to $1 under its final name only once complete.
write_file() {
  mkdir -p "$(dirname "$1")"
  cat > "$1.airlock-new"
  mv "$1.airlock-new" "$1"
}
# Replaces the lines of file $1 whose key (before `=`) matches $2 with the lines on stdin.
replace_keys() {
  mkdir -p "$(dirname "$1")"
  touch "$1"
  { grep -v -E "^[[:space:]]*($2)[[:space:]]*=" "$1" || true; cat; } > "$1.airlock-new"
  mv "$1.airlock-new" "$1"
}

if [ "$system" = yes ]; then
  name="airlock-$(printf '%s' "$host" | tr -c 'A-Za-z0-9.-' '_').crt"
  case "$store" in
    debian)
      mkdir -p /usr/local/share/ca-certificates
      write_file "/usr/local/share/ca-certificates/$name" < "$tmp/ca.crt"
      update-ca-certificates > /dev/null
      echo "system: /usr/local/share/ca-certificates/$name (update-ca-certificates)"
      ;;
    p11kit)
      trust anchor --store "$tmp/ca.crt"
      echo "system: added to the trust store (trust anchor)"
      ;;
    macos)
      echo "system: to trust the CA system-wide, run:"
      echo "    sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain '$airlock/ca.crt'"
      ;;
  esac
fi

write_file "$airlock/ca.crt" < "$tmp/ca.crt"
system_bundle=
for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/ca-bundle.pem \
  /etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem /etc/pki/tls/cacert.pem /etc/ssl/cert.pem; do
  if [ -f "$f" ]; then system_bundle="$f"; break; fi
done
bundle="$airlock/ca-bundle.pem"
{
  if [ -n "$system_bundle" ]; then cat "$system_bundle"; echo; fi
  cat "$tmp/ca.crt"
} | write_file "$bundle"
echo "ca: $airlock/ca.crt; bundle for pip, npm and Go: $bundle (${system_bundle:-no system bundle found} + the CA)"

{
  echo "[global]"
  echo "index-url = $base/pypi/simple/"
  echo "cert = $bundle"
  case "$base" in http://*) echo "trusted-host = $host" ;; esac
} | write_file "$config/pip/pip.conf"
echo "pip: $config/pip/pip.conf"

printf 'registry=%s/npm/\ncafile=%s\n' "$base" "$bundle" | replace_keys "$HOME/.npmrc" 'registry|cafile'
echo "npm: $HOME/.npmrc"

printf 'GOPROXY=%s/go,off\nGOSUMDB=off\nGOTOOLCHAIN=local\n' "$base" | replace_keys "$goconfig/env" 'GOPROXY|GOSUMDB|GOTOOLCHAIN'
echo "go: $goconfig/env (and SSL_CERT_FILE in ~/.pulumi/airlock-env.sh)"

# NuGet.Config with this appliance as the only source (the build writes it into the here-document).
write_file "$HOME/.nuget/NuGet/NuGet.Config" <<EOF
@NUGET_CONFIG@
EOF
echo "nuget: $HOME/.nuget/NuGet/NuGet.Config (dotnet trusts the system store only: for https, run this as root with --system)"

write_file "$HOME/.pulumi/airlock-env.sh" <<EOF
# Written by airlock-setup: the Pulumi CLI uses the appliance's plugin mirror; Go, the Pulumi CLI
# and node-based tools trust the appliance's CA.
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_PLUGIN_DOWNLOAD_URL_OVERRIDES='.*=$base/pulumi/plugins'
export SSL_CERT_FILE='$bundle'
export NODE_EXTRA_CA_CERTS='$airlock/ca.crt'
EOF
line='[ -f "$HOME/.pulumi/airlock-env.sh" ] && . "$HOME/.pulumi/airlock-env.sh"'
touch "$HOME/.profile"
grep -qxF "$line" "$HOME/.profile" || echo "$line" >> "$HOME/.profile"
echo "pulumi: $HOME/.pulumi/airlock-env.sh (sourced from ~/.profile: PULUMI_*, SSL_CERT_FILE, NODE_EXTRA_CA_CERTS)"
echo "airlock-setup: configured for $base"
