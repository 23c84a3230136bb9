"""Fake but well-formed personal data to plant in the crawl (every value is a canary).

Each generator returns a value of one PII kind in one of several real-world formats: card
numbers pass the Luhn check, IBANs their mod-97 check, SSNs avoid the never-issued ranges.
"""

from __future__ import annotations

import random
import string

PII_KINDS = ("email", "phone", "ip_address", "credit_card", "ssn", "iban", "secret")

_FIRST = ["anna", "ben", "carla", "dmitri", "elena", "farid", "grace", "hugo", "ines", "jonas", "kemal", "lucia",
          "maya", "niko", "olga", "pavel", "quinn", "rosa", "sami", "tara"]
_LAST = ["smith", "novak", "garcia", "okafor", "lindqvist", "tanaka", "moreau", "kowalski", "silva", "brennan"]
_DOMAINS = ["example.com", "mailbox.org", "corp-mail.net", "uni-halden.edu", "post.example.co.uk", "inbox.io"]


def luhn_complete(digits: str) -> str:
    """Append the Luhn check digit to ``digits``."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return digits + str((10 - total % 10) % 10)


def iban_complete(country: str, bban: str) -> str:
    """An IBAN with valid mod-97 check digits for ``country`` + ``bban``."""
    rearranged = bban + country + "00"
    num = int("".join(str(int(ch, 36)) for ch in rearranged))
    return f"{country}{98 - num % 97:02d}{bban}"


def email(rng: random.Random) -> str:
    f, l = rng.choice(_FIRST), rng.choice(_LAST)
    local = rng.choice([f"{f}.{l}", f"{f}{rng.randint(1, 99)}", f"{f[0]}{l}", f"{f}_{l}+news"])
    return f"{local}@{rng.choice(_DOMAINS)}"


def phone(rng: random.Random) -> str:
    n = lambda k: "".join(rng.choice(string.digits) for _ in range(k))  # noqa: E731
    return rng.choice([
        f"+1 ({rng.randint(201, 989)}) {rng.randint(200, 999)}-{n(4)}",
        f"({rng.randint(201, 989)}) {rng.randint(200, 999)}-{n(4)}",
        f"{rng.randint(201, 989)}-{rng.randint(200, 999)}-{n(4)}",
        f"+44 20 {n(4)} {n(4)}",
        f"+49 30 {n(8)}",
        f"+33 6 {n(2)} {n(2)} {n(2)} {n(2)}",
        f"0{rng.randint(20, 99)} {n(4)} {n(4)}",
    ])


def ip_address(rng: random.Random) -> str:
    if rng.random() < 0.65:
        first = rng.choice([10, 172, 192, rng.randint(11, 223)])
        if first == 192:
            return f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    if rng.random() < 0.5:
        return "2001:db8:" + ":".join(groups[:2]) + "::" + groups[3]
    return ":".join(groups)


def credit_card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16)])
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    num = luhn_complete(body)
    sep = rng.choice(["", " ", "-"])
    if length == 15:
        return sep.join([num[:4], num[4:10], num[10:]])
    return sep.join(num[i:i + 4] for i in range(0, 16, 4))


def ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def iban(rng: random.Random) -> str:
    country, length = rng.choice([("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14), ("ES", 20)])
    if country == "GB":
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(
            rng.choice(string.digits) for _ in range(14))
    elif country == "NL":
        bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(
            rng.choice(string.digits) for _ in range(10))
    else:
        bban = "".join(rng.choice(string.digits) for _ in range(length))
    value = iban_complete(country, bban)
    if rng.random() < 0.5:
        value = " ".join(value[i:i + 4] for i in range(0, len(value), 4))
    return value


def secret(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits
    r = lambda k, a=alnum: "".join(rng.choice(a) for _ in range(k))  # noqa: E731
    return rng.choice([
        "AKIA" + r(16, string.ascii_uppercase + string.digits),
        "ghp_" + r(36),
        "xoxb-" + r(11, string.digits) + "-" + r(12, string.digits) + "-" + r(24),
        "sk-" + r(48),
        "AIza" + r(35, alnum + "-_"),
        "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(r(64, alnum + "+/") for _ in range(4))
        + "\n-----END RSA PRIVATE KEY-----",
    ])


GENERATORS = {"email": email, "phone": phone, "ip_address": ip_address, "credit_card": credit_card,
              "ssn": ssn, "iban": iban, "secret": secret}

# sentences that carry one planted value each: {v} is the value
CONTEXTS = {
    "email": ["You can reach me at {v} for questions.", "Send your application to {v} before Friday.",
              "Contact: {v}"],
    "phone": ["Call the office on {v} during opening hours.", "My number is {v}, text me anytime.",
              "Phone: {v}"],
    "ip_address": ["The server at {v} stopped answering last night.", "Login attempts came from {v}.",
                   "Set the gateway to {v} and restart."],
    "credit_card": ["I paid with card {v} and never got the goods.", "Card number: {v}",
                    "Please charge {v} for the order."],
    "ssn": ["Her social security number is {v}.", "SSN: {v}", "Enter {v} in the tax form."],
    "iban": ["Transfer the rent to {v} by the first.", "IBAN: {v}", "Our account is {v}, thanks."],
    "secret": ["Here is the deploy key {v} for the build.", "export API_TOKEN={v}",
               "Config dump:\n{v}\nend of config."],
}
