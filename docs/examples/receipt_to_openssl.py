"""Prepare a Yibao e-receipt for `openssl` to verify: Python's standard library only.

    curl -s "$LEDGER/v1/receipts/$CODE/$NUMBER" -H "Authorization: Bearer $API_KEY" > receipt.json
    curl -s "$LEDGER/v1/receipts/public-keys" > keys.json
    python3 receipt_to_openssl.py receipt.json keys.json
    openssl pkeyutl -verify -pubin -keyform DER -inkey key.der -rawin -in face.bin -sigfile sig.bin

Writes face.bin (what was signed: the RFC 8785 canonical JSON of the ``receipt``
object, UTF-8), sig.bin (the Ed25519 signature, decoded from base64) and key.der (the
public key that ``key_id`` names, as a DER SubjectPublicKeyInfo) in the current folder.
Only the full face verifies (the owner's read, ``"face": "full"``): the public, masked
face a check code shows is not what was signed.

RFC 8785 for receipt faces is ``json.dumps`` with sorted keys, no whitespace and UTF-8
kept: faces hold only objects, arrays, strings, integers, booleans and null, and their
keys are ASCII (no floats, whose RFC 8785 form ``json.dumps`` does not give).
"""

import base64
import json
import sys

ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def main(receipt_path: str, keys_path: str) -> int:
    with open(receipt_path, encoding="utf-8") as f:
        receipt = json.load(f)
    with open(keys_path, encoding="utf-8") as f:
        keys = json.load(f)
    if receipt.get("face", "full") != "full":
        print("this is the masked face: read the receipt with the owner's key", file=sys.stderr)
        return 1
    key = next((k for k in keys if k["key_id"] == receipt["key_id"]), None)
    if key is None or key.get("purpose") not in ("receipts", "all"):
        print(f"no receipts key {receipt['key_id']} in {keys_path}", file=sys.stderr)
        return 1
    with open("face.bin", "wb") as f:
        f.write(canonical(receipt["receipt"]))
    with open("sig.bin", "wb") as f:
        f.write(base64.b64decode(receipt["signature"], validate=True))
    with open("key.der", "wb") as f:
        f.write(ED25519_SPKI_PREFIX + base64.b64decode(key["public_key"], validate=True))
    print(f"face.bin, sig.bin, key.der written (key {key['key_id']}); now run openssl")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
