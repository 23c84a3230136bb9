"""A labelled PII test set: many formats of every kind in varied contexts, plus hard negatives.

``positives()`` -> list of ``(text, kind, value)`` where ``value`` occurs in ``text`` exactly
once; ``negatives()`` -> list of texts that contain no PII (versions, dates, times, ISBNs,
UUIDs, commit hashes, prices, coordinates, scores, ...). Deterministic (seeded).
"""

from __future__ import annotations

import ipaddress
import random
import string

CONTEXTS = [
    "{v}",
    "Contact: {v}",
    "Please reach out to {v} for details.",
    "For questions write to {v}, we answer within two days.",
    "(see {v})",
    "Our records show \"{v}\" as the value on file.",
    "- {v}\n- another line of the list",
    "The form says {v}. Thanks!",
    "Details: [{v}]",
    "Line one of the message.\n{v}\nLine three of the message.",
    "<p>Info: {v}</p>",
    "value={v};",
]


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _luhn_complete(rng: random.Random, prefix: str, length: int) -> str:
    body = prefix + _digits(rng, length - len(prefix) - 1)
    for c in "0123456789":
        cand = body + c
        total = 0
        for i, ch in enumerate(reversed(cand)):
            d = int(ch)
            if i % 2:
                d = d * 2 - 9 if d * 2 > 9 else d * 2
            total += d
        if total % 10 == 0:
            return cand
    raise AssertionError


def _iban(rng: random.Random, country: str, bban_len: int, letters: int = 0) -> str:
    bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(letters)) + _digits(rng, bban_len - letters)
    moved = bban + country + "00"
    num = int("".join(str(int(c, 36)) for c in moved))
    check = 98 - num % 97
    return f"{country}{check:02d}{bban}"


def _group(s: str, n: int = 4, sep: str = " ") -> str:
    return sep.join(s[i:i + n] for i in range(0, len(s), n))


def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


ALNUM = string.ascii_letters + string.digits


def emails(rng: random.Random) -> list[str]:
    users = ["john.doe", "jane_smith", "a.b.c", "first+tag", "x", "user123", "O'Neil".replace("'", ""),
             "mary-ann", "li.wei88", "admin"]
    domains = ["example.com", "mail.example.org", "uni.ac.uk", "corp.co.jp", "e.io", "sub.domain-x.net",
               "gmail.com", "posteo.de"]
    out = [f"{rng.choice(users)}{rng.randrange(100)}@{rng.choice(domains)}" for _ in range(60)]
    out += [f"{rng.choice(users).upper()}@{rng.choice(domains).upper()}" for _ in range(10)]
    out += [f"{u} [at] {d.replace('.', ' [dot] ')}" for u, d in
            zip(["john", "jane.d", "info", "support"], ["example.com", "mail.org", "site.co.uk", "host.net"])]
    out += [f"{u}(at){d.replace('.', '(dot)')}" for u, d in zip(["bob", "alice"], ["example.com", "web.de"])]
    return out


def phones(rng: random.Random) -> list[str]:
    out = []
    for _ in range(12):
        a, b, c = rng.randrange(200, 999), _digits(rng, 3), _digits(rng, 4)
        out += [f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"+1 {a} {b} {c}", f"+1-{a}-{b}-{c}",
                f"1-{a}-{b}-{c}"]
    for _ in range(8):
        out += [f"+44 20 {_digits(rng, 4)} {_digits(rng, 4)}", f"020 {_digits(rng, 4)} {_digits(rng, 4)}",
                f"07700 {_digits(rng, 6)}", f"+44 (0)161 {_digits(rng, 3)} {_digits(rng, 4)}"]
        out += [f"+33 {rng.randrange(1, 9)} {_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)}",
                f"0{rng.randrange(1, 9)} {_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)}",
                f"0{rng.randrange(1, 9)}.{_digits(rng, 2)}.{_digits(rng, 2)}.{_digits(rng, 2)}.{_digits(rng, 2)}"]
        out += [f"+49 30 {_digits(rng, 7)}", f"030 {_digits(rng, 8)}", f"0171-{_digits(rng, 7)}",
                f"089/{_digits(rng, 6)}-0", f"+49 (0) 89 {_digits(rng, 6)}"]
        out += [f"+91 {_digits(rng, 5)} {_digits(rng, 5)}", f"+86 138 {_digits(rng, 4)} {_digits(rng, 4)}",
                f"+81-3-{_digits(rng, 4)}-{_digits(rng, 4)}", f"+61 2 {_digits(rng, 4)} {_digits(rng, 4)}",
                f"0044 20 {_digits(rng, 4)} {_digits(rng, 4)}", f"+4915{_digits(rng, 9)}"]
    return out


def ip_addresses(rng: random.Random) -> list[str]:
    out = []
    for _ in range(30):
        out.append(".".join(str(rng.randrange(1, 256)) for _ in range(4)))
    out += ["10.0.0.1", "192.168.1.1", "172.16.254.3", "127.0.0.1", "8.8.8.8", "255.255.255.0",
            "0.0.0.0", "100.64.12.7"]
    for _ in range(20):
        addr = ipaddress.IPv6Address(rng.getrandbits(128))
        out += [str(addr), addr.exploded]
    out += ["2001:db8::1", "fe80::1ff:fe23:4567:890a", "::1", "::ffff:192.0.2.128", "2001:db8:85a3::8a2e:370:7334",
            "fd00::abcd", "fe80::1%eth0", "2001:0db8:0000:0000:0000:ff00:0042:8329"]
    return out


def credit_cards(rng: random.Random) -> list[str]:
    out = []
    for prefix, length in [("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16), ("34", 15),
                           ("37", 15), ("6011", 16), ("65", 16), ("3528", 16), ("36", 14), ("4", 19)]:
        for _ in range(6):
            n = _luhn_complete(rng, prefix, length)
            if length == 15:
                fmt = [n, f"{n[:4]} {n[4:10]} {n[10:]}", f"{n[:4]}-{n[4:10]}-{n[10:]}"]
            elif length == 14:
                fmt = [n, f"{n[:4]} {n[4:10]} {n[10:]}"]
            else:
                fmt = [n, _group(n), _group(n, sep="-")]
            out.append(rng.choice(fmt))
    out += ["4111 1111 1111 1111", "4111-1111-1111-1111", "5500 0000 0000 0004", "3782 822463 10005",
            "6011111111111117", "4012888888881881"]
    return out


def ssns(rng: random.Random) -> list[str]:
    out = []
    for _ in range(60):
        area = rng.choice([x for x in range(1, 900) if x != 666])
        v = f"{area:03d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"
        out.append(v if rng.random() < 0.8 else v.replace("-", " "))
    return out


def ibans(rng: random.Random) -> list[str]:
    specs = [("DE", 18, 0), ("GB", 18, 4), ("FR", 23, 0), ("ES", 20, 0), ("IT", 23, 1), ("NL", 14, 4),
             ("BE", 12, 0), ("CH", 17, 0), ("AT", 16, 0), ("PL", 24, 0), ("SE", 20, 0), ("IE", 18, 4)]
    out = []
    for c, n, letters in specs:
        for _ in range(5):
            v = _iban(rng, c, n, letters)
            out.append(v if rng.random() < 0.5 else _group(v))
    out += ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR1420041010050500013M02606",
            "NL91ABNA0417164300"]
    return out


def secrets(rng: random.Random) -> list[str]:
    out = []
    for _ in range(6):
        out.append("AKIA" + _rand(rng, string.ascii_uppercase + "234567", 16))
        out.append("ASIA" + _rand(rng, string.ascii_uppercase + "234567", 16))
        out.append("ghp_" + _rand(rng, ALNUM, 36))
        out.append("gho_" + _rand(rng, ALNUM, 36))
        out.append("github_pat_" + _rand(rng, ALNUM + "_", 82))
        out.append(f"xoxb-{_digits(rng, 12)}-{_digits(rng, 13)}-{_rand(rng, ALNUM, 24)}")
        out.append(f"xoxp-{_digits(rng, 12)}-{_digits(rng, 12)}-{_rand(rng, ALNUM, 32)}")
        out.append("sk-" + _rand(rng, ALNUM, 48))
        out.append("sk-proj-" + _rand(rng, ALNUM + "_-", 64))
        out.append("sk_live_" + _rand(rng, ALNUM, 24))
        out.append("AIza" + _rand(rng, ALNUM + "_-", 35))
        header = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
        out.append(f"{header}.eyJ{_rand(rng, ALNUM, 40)}.{_rand(rng, ALNUM + '_-', 43)}")
    pem_body = "\n".join(_rand(random.Random(7), ALNUM + "+/", 64) for _ in range(5))
    out += [f"-----BEGIN RSA PRIVATE KEY-----\n{pem_body}\n-----END RSA PRIVATE KEY-----",
            f"-----BEGIN PRIVATE KEY-----\n{pem_body}==\n-----END PRIVATE KEY-----",
            f"-----BEGIN OPENSSH PRIVATE KEY-----\n{pem_body}\n-----END OPENSSH PRIVATE KEY-----",
            f"-----BEGIN EC PRIVATE KEY-----\n{pem_body}\n-----END EC PRIVATE KEY-----"]
    return out


# generic assignments: (template with {v}, value); the value is what must be found
def secret_assignments(rng: random.Random) -> list[tuple[str, str]]:
    out = []
    templates = ["api_key = '{v}'", 'API_KEY="{v}"', "apiKey: {v}", "token: {v}", "access_token={v}",
                 "auth_token => '{v}'", "client_secret: \"{v}\"", "SECRET_KEY = {v}", "password={v}",
                 "export AWS_SECRET_ACCESS_KEY={v}", "Authorization: Bearer {v}", "\"refresh_token\": \"{v}\""]
    for t in templates:
        for _ in range(4):
            v = _rand(rng, ALNUM, rng.randrange(20, 48))
            if not any(c.isdigit() for c in v):
                v = v[:-1] + "7"
            out.append((t.format(v=v), v))
    return out


def positives(seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    cases: list[tuple[str, str, str]] = []
    for kind, values in [("email", emails(rng)), ("phone", phones(rng)), ("ip_address", ip_addresses(rng)),
                         ("credit_card", credit_cards(rng)), ("ssn", ssns(rng)), ("iban", ibans(rng)),
                         ("secret", secrets(rng))]:
        for v in values:
            ctx = rng.choice(CONTEXTS)
            if kind == "ssn":
                ctx = rng.choice(["SSN: {v}", "social security number {v} on file", "{v}", "ssn {v}."])
            if kind == "secret" and v.startswith("-----"):
                ctx = "key file:\n{v}\nend of file"
            cases.append((ctx.format(v=v), kind, v))
    for text, v in secret_assignments(rng):
        cases.append((text, "secret", v))
    return cases


def negatives(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(20):
        y, mo, d = rng.randrange(1950, 2030), rng.randrange(1, 13), rng.randrange(1, 29)
        h, mi, s = rng.randrange(24), rng.randrange(60), rng.randrange(60)
        out += [f"Released on {y}-{mo:02d}-{d:02d}.", f"Date: {d:02d}/{mo:02d}/{y}", f"{d:02d}.{mo:02d}.{y} at {h:02d}:{mi:02d}",
                f"timestamp {y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}Z", f"The meeting is at {h:02d}:{mi:02d}:{s:02d} today.",
                f"{mo}/{d}/{y} {h}:{mi:02d} PM"]
        a, b, c = rng.randrange(0, 20), rng.randrange(0, 30), rng.randrange(0, 200)
        out += [f"version {a}.{b}.{c}", f"v{a}.{b}.{c}.{rng.randrange(10)}", f"upgrade to {a}.{b}.{c}-rc1",
                f"Python {a}.{b}.{c}", f"release {a}.{b}.{c}.{rng.randrange(10)}", f"{a}.{b}.{c}.{rng.randrange(10)}-beta",
                f"numpy=={a}.{b}.{c}"]
        out += [f"ISBN 978-{rng.randrange(10)}-{_digits(rng, 2)}-{_digits(rng, 6)}-{rng.randrange(10)}",
                f"ISBN-10: {rng.randrange(10)}-{_digits(rng, 3)}-{_digits(rng, 5)}-{rng.randrange(10)}",
                f"ISBN 978{_digits(rng, 10)}"]
        out += [f"id {_rand(rng, '0123456789abcdef', 8)}-{_rand(rng, '0123456789abcdef', 4)}-4{_rand(rng, '0123456789abcdef', 3)}-a{_rand(rng, '0123456789abcdef', 3)}-{_rand(rng, '0123456789abcdef', 12)}",
                f"commit {_rand(rng, '0123456789abcdef', 40)}", f"fixed in {_rand(rng, '0123456789abcdef', 7)}",
                f"sha256: {_rand(rng, '0123456789abcdef', 64)}"]
        out += [f"It costs ${rng.randrange(1, 9999):,}.{_digits(rng, 2)}", f"Price: €{rng.randrange(1, 999)},{_digits(rng, 2)}",
                f"USD {rng.randrange(1000, 99999999):,}", f"revenue of £{rng.randrange(1, 999)}.{rng.randrange(10)}m"]
        la, lo = rng.uniform(-90, 90), rng.uniform(-180, 180)
        out += [f"located at {la:.4f}, {lo:.4f}", f"coordinates ({la:.6f}, {lo:.6f})",
                f"{abs(la):.4f}° N, {abs(lo):.4f}° E", f"lat={la:+.5f}&lon={lo:+.5f}"]
        out += [f"final score {rng.randrange(10)}-{rng.randrange(10)}", f"won {rng.randrange(60, 130)}-{rng.randrange(60, 130)}",
                f"a {rng.randrange(20)}:{rng.randrange(20)} draw", f"in the years {y}-{y + rng.randrange(1, 20)}",
                f"pp. {rng.randrange(1, 300)}-{rng.randrange(300, 600)}"]
        out += [f"population {rng.randrange(10**6, 10**9):,}", f"Order #{_digits(rng, 8)} shipped",
                f"{rng.randrange(10**9, 2 * 10**9)} seconds since epoch",
                f"MAC {':'.join(_rand(rng, '0123456789ABCDEF', 2) for _ in range(6))}",
                "call std::vector<int>::size() and Foo::Bar",
                f"ratio {rng.randrange(1, 99)}:{rng.randrange(1, 99)}", f"room {rng.randrange(100, 999)}",
                "pi is about 3.14159265358979", f"{rng.randrange(100)}% of {rng.randrange(10000)} users",
                f"zip code {_digits(rng, 5)}", f"phone-like part number {_digits(rng, 3)}-{_digits(rng, 2)}"]
    out += ["icon@2x.png and logo@3x.jpg", "api_key=YOUR_API_KEY_HERE", "token: the next one",
            "password: ********", "we use sk-learn and scikit-learn", "the key is to be patient: always",
            "DE00 1234 5678 9012 3456 78 is not valid", "4111 1111 1111 1112 fails Luhn",
            "000-12-3456 is not a valid SSN", "666-12-3456 neither", "AKIA is just a prefix",
            "Token: 12345678", "git@ is not an email", "user@localhost is not routable",
            "The answer is 42, and 1,234,567 is a big number."]
    return out
