#!/usr/bin/env bash
# Debian packages the ledger's people-facing receipts and their tests need:
#   fonts-wqy-microhei  a CJK TrueType font embedded in receipt PDFs (Chinese text)
#   chromium            headless browser for the receipt verification page test
#   poppler-utils       pdftoppm/pdftotext, to check the rendered receipt PDF
#   jq, openssl, curl   the README's quickstart (its e2e test runs it as written)
# Idempotent: installs only what is missing; runs `apt-get update` at most once, and
# only when a package cannot be found in the current lists. Needs root (or sudo).
set -euo pipefail

PACKAGES=(fonts-wqy-microhei chromium poppler-utils jq openssl curl)
export DEBIAN_FRONTEND=noninteractive

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-extras: no apt-get; install these yourself: ${missing[*]}" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-extras: run as root to install: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "install-extras: installing ${missing[*]}"
if ! $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
