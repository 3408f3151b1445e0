#!/usr/bin/env python3
"""Verifies authgate's X-Auth-Assertion JWTs with PyJWT, independently of
authgate's own JWT code (tests/assertion.rs runs it).

    verify.py --jwks FILE --alg ALG --iss ISS --aud AUD TOKEN...

For each token: the header's kid picks the key from the JWKS (no kid, or a kid
the JWKS lacks, is a failure); the key's alg must be ALG; the signature, exp,
iat, iss and aud are checked by jwt.decode with no leeway; exp, iat, iss, aud
and sub are required. Prints one JSON array of {"header", "claims"} on stdout
and exits 0 when every token verifies; otherwise prints the reason on stderr
and exits 1.
"""
import argparse
import json
import sys

import jwt
from jwt import PyJWKSet


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--jwks", required=True)
    p.add_argument("--alg", required=True, choices=["ES256", "EdDSA"])
    p.add_argument("--iss", required=True)
    p.add_argument("--aud", required=True)
    p.add_argument("tokens", nargs="+")
    a = p.parse_args()
    with open(a.jwks, encoding="utf-8") as f:
        doc = json.load(f)
    keys = PyJWKSet.from_dict(doc)
    by_kid = {}
    for k in keys.keys:
        if not k.key_id:
            print(f"a JWKS key has no kid: {k._jwk_data}", file=sys.stderr)
            return 1
        by_kid[k.key_id] = k
    out = []
    for i, token in enumerate(a.tokens):
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            if kid not in by_kid:
                raise jwt.InvalidTokenError(f"kid {kid!r} is not in the JWKS")
            key = by_kid[kid]
            if key.algorithm_name != a.alg:
                raise jwt.InvalidTokenError(
                    f"the JWKS key {kid} is for {key.algorithm_name}, not {a.alg}"
                )
            if header.get("alg") != a.alg:
                raise jwt.InvalidTokenError(f"header alg {header.get('alg')!r}")
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[a.alg],
                audience=a.aud,
                issuer=a.iss,
                leeway=0,
                options={
                    "require": ["exp", "iat", "iss", "aud", "sub"],
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_iat": True,
                    "verify_aud": True,
                    "verify_iss": True,
                },
            )
        except Exception as e:  # noqa: BLE001 - every failure is a verdict
            print(f"token {i}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        out.append({"header": header, "claims": claims})
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
