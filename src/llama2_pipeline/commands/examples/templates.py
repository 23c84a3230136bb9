"""The example files' text: templates from this package's data files, filled in with a seed.

``region.yaml`` holds the made-up region (towns, people, dishes, plants, birds, products) that
every file describes, ``corpus.yaml`` how each kind of document is phrased, ``chat.yaml`` the
dialogues and preference pairs (and ``README.template.md`` the README). Every draw comes from a
``random.Random`` seeded with a string, in a fixed order, so a seed gives the same text on every
machine: keep the order of the draws below (and of the data files' entries) or the files change.
"""

from __future__ import annotations

import functools
import random
import string
from importlib import resources
from typing import Any

import yaml

SEED = 1234
DATA_FILES = ("region.yaml", "corpus.yaml", "chat.yaml", "README.template.md")


@functools.cache
def data(name: str) -> Any:
    """One of DATA_FILES, read once (shared: never modify what it returns)."""
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return yaml.safe_load(text) if name.endswith(".yaml") else text


class _Formatter(string.Formatter):
    """``str.format`` plus ``{x!u}`` (first letter upper-case: "the high street" -> "The high street",
    where ``capitalize`` would also lower "Mill Lane") and ``{x!l}`` (lower-case), for the data files."""

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion == "u":
            return value[:1].upper() + value[1:]
        if conversion == "l":
            return value.lower()
        return super().convert_field(value, conversion)


_fmt = _Formatter().format


def _fill(templates: list[str], **fields: Any) -> list[str]:
    return [_fmt(t, **fields) for t in templates]


def _draw(rng: random.Random, fields: dict, options: dict, *names: str) -> dict:
    """For each name in turn, pick one of ``options[name]`` and fill it in from ``fields`` (the
    picks before it included) into ``fields[name]``; returns ``fields``."""
    for name in names:
        fields[name] = _fmt(rng.choice(options[name]), **fields)
    return fields


def _numbered(steps: list[str]) -> str:
    return "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))


class _Region:
    """The region's towns and their facts, drawn from ``rng``."""

    def __init__(self, rng: random.Random, n_towns: int = 40):
        r = data("region.yaml")
        names = [h + t for h in r["town_heads"] for t in r["town_tails"]]
        rng.shuffle(names)
        self.towns = [{
            "name": name, "river": rng.choice(r["rivers"]), "city": rng.choice(r["cities"]),
            "km": rng.randrange(8, 70), "minutes": rng.randrange(15, 95, 5),
            "population": rng.randrange(2, 48) * 500 + rng.randrange(0, 500),
            "founded": rng.randrange(1150, 1750), "market_day": rng.choice(r["days"][:6]),
            "landmarks": rng.sample(range(len(r["landmarks"])), 3), "speciality": rng.choice(r["specialities"]),
            "season": rng.choice(r["seasons"]),
        } for name in names[:n_towns]]

    def person(self, rng: random.Random) -> str:
        r = data("region.yaml")
        return f"{rng.choice(r['first_names'])} {rng.choice(r['last_names'])}"


# ---- corpus documents ------------------------------------------------------------------------

def _travel(t: dict, rng: random.Random) -> str:
    text, landmarks = data("corpus.yaml")["travel_guide"], data("region.yaml")["landmarks"]
    f = _draw(rng, dict(t), text, "intro", "pace", "trip")
    f["sights"] = " ".join(_fmt(text["sight"], lead=lead, place=landmarks[i][0], detail=landmarks[i][1])
                           for lead, i in zip(text["sight_leads"], t["landmarks"], strict=True))
    return _fmt(text["layout"], **_draw(rng, f, text, "food", "when"))


def _recipe(dish: dict, rng: random.Random) -> str:
    text = data("corpus.yaml")["cookbook"]
    temp, minutes = rng.choice([180, 190, 200, 220]), rng.choice([20, 25, 30, 35, 40, 45, 90, 120])
    if dish["kind"] in ("bake", "bread"):  # stews simmer for two hours, loaves and cakes do not
        minutes = rng.choice([20, 25, 30, 35, 40])
    intro = _fmt(rng.choice(text["intro"]), **dish)
    ingredients = "\n".join(f"- {q} {item}" for q, item in dish["ingredients"])
    method = _numbered(_fill(text["method"][dish["kind"]], temp=temp, minutes=minutes))
    tips = " ".join(rng.sample(data("region.yaml")["recipe_tips"], 2))
    return "\n\n".join([dish["name"], intro, "Ingredients:\n" + ingredients, "Method:\n" + method, tips])


def _garden(plant: dict, rng: random.Random) -> str:
    text = data("corpus.yaml")["garden_notes"]
    return _fmt(text["layout"], **_draw(rng, dict(plant), text, "title", "sowing", "soil", "pests"))


def _journal(region: _Region, rng: random.Random) -> str:
    text = data("corpus.yaml")["field_journal"]
    f = _draw(rng, {"town": rng.choice(region.towns)["name"]}, text, "place")
    f.update(day=rng.randrange(1, 29), month=rng.choice(data("region.yaml")["months"]))
    birds = rng.sample(data("region.yaml")["birds"], rng.randrange(4, 7))
    f["seen"] = "; ".join(f"{k} {plural} {doing}" if (k := rng.randrange(1, 14)) > 1 else f"a {bird} {doing}"
                          for bird, plural, doing in birds)
    f["person"] = region.person(rng)
    return _fmt(text["layout"], **_draw(rng, f, text, "weather", "water", "visit", "leaving"))


def _news(region: _Region, rng: random.Random, kind: str) -> str:
    text = data("corpus.yaml")["town_news"][kind]
    t = rng.choice(region.towns)
    f = {**t, "who": region.person(rng), "day": rng.choice(data("region.yaml")["days"])}
    # a number is drawn before the template that may use it is picked, used or not: the order of the
    # draws is the files' bytes, so keep it
    if kind == "council":
        f["amount"] = rng.randrange(12, 480) * 1000
        _draw(rng, f, text, "project", "head")
        f.update(residents=rng.randrange(120, 900), votes_for=rng.randrange(7, 13), votes_against=rng.randrange(1, 6))
        _draw(rng, f, text, "body", "deadline", "quote", "dissent", "close")
    elif kind == "sport":
        f["other"] = rng.choice([o for o in region.towns if o is not t])["name"]
        f.update(home=rng.randrange(0, 5), away=rng.randrange(0, 4))
        f["result"] = "won" if f["home"] > f["away"] else "drew" if f["home"] == f["away"] else "lost"
        _draw(rng, f, text, "game")
        f["crowd"] = rng.randrange(80, 600)
        f["opener"] = _fmt(text["opener"]["scored" if f["home"] else "none"], **f)
        _draw(rng, f, text, "second_half")
        f["next"] = rng.choice(region.towns)["name"]
    elif kind == "event":
        _draw(rng, f, text, "what")
        f["raised"] = rng.randrange(4, 90) * 50
        _draw(rng, f, text, "cause", "head")
        f["crowd"] = rng.randrange(3, 30) * 50
        _draw(rng, f, text, "body", "thanks", "plans")
    else:  # roadworks
        f["weeks"] = rng.randrange(2, 12)
        _draw(rng, f, text, "road", "why", "head", "body", "after", "quote")
    return _fmt(text["layout"], **f)


def _review(product: dict, rng: random.Random, region: _Region) -> str:
    text = data("corpus.yaml")["product_reviews"]
    stars = rng.choice([5, 5, 4, 4, 4, 3, 2])
    f = {**product, "stars": stars, "reviewer": region.person(rng)}
    good = rng.sample(product["pros"], 3 if stars >= 4 else 2)
    bad = rng.sample(product["cons"], 1 if stars >= 4 else 2)
    f.update(likes=", ".join(good[:-1]) + " and " + good[-1], dislikes=" and ".join(bad))
    _draw(rng, f, text, "when", "why")
    f["verdict"] = rng.choice(text["verdict"][stars])
    return _fmt(text["layout"], **f)


def _guide(guide: dict, rng: random.Random) -> str:
    intro = rng.choice(data("corpus.yaml")["how_to"]["intro"])
    return f"{guide['title']}\n\n{intro}\n\n" + _numbered(guide["steps"])


def _dirty(docs: list[dict], region: _Region) -> list[dict]:
    """What a real crawl also holds: cleaning should remove all but the contact note (redacted)."""
    text = data("corpus.yaml")["web_scrape"]
    recipe = next(d for d in docs if d["source"] == "cookbook")
    near = recipe["text"].replace("Method:", "Method (updated):").replace("Ingredients:", "You will need:")
    scraped = [docs[3]["text"], near, *text["fragments"], " ".join([text["spam"]] * 25)]  # docs[3]: a duplicate
    return [{"text": s, "source": "web_scrape"} for s in scraped] + [
        {"text": _fmt(text["notice"], town=region.towns[0]["name"]), "source": "club_newsletter"}]


def corpus_documents(seed: int = SEED) -> list[dict]:
    """The raw corpus: ``{"id", "text", "source"}`` records (about 200 documents, ~0.2 MiB)."""
    rng = random.Random(f"byo-corpus-{seed}")
    region, r = _Region(random.Random(f"byo-region-{seed}")), data("region.yaml")
    docs = [{"text": _travel(t, rng), "source": "travel_guide"} for t in region.towns]
    docs += [{"text": _recipe(d, rng), "source": "cookbook"} for d in r["dishes"]]
    docs += [{"text": _garden(p, rng), "source": "garden_notes"} for p in r["plants"]]
    docs += [{"text": _journal(region, rng), "source": "field_journal"} for _ in range(24)]
    docs += [{"text": _news(region, rng, kind), "source": "town_news"}
             for kind in ("council", "sport", "event", "roadworks") for _ in range(10)]
    docs += [{"text": _review(p, rng, region), "source": "product_reviews"} for p in r["products"] for _ in range(3)]
    docs += [{"text": _guide(g, rng), "source": "how_to"} for g in data("corpus.yaml")["how_to"]["guides"]]
    rng.shuffle(docs)
    docs += _dirty(docs, region)
    return [{"id": f"byo-doc-{i:05d}", "text": d["text"], "source": d["source"]} for i, d in enumerate(docs)]


# ---- SFT dialogues and preference pairs ------------------------------------------------------

def sft_dialogues(seed: int = SEED) -> list[dict]:
    """About forty dialogues in the Llama-2-chat message format, some multi-turn, some with a
    system message: questions about the region's towns, recipes and plants, arithmetic and unit
    conversions, rewriting, refusals of unsafe requests and answers to borderline-safe ones."""
    rng = random.Random(f"byo-sft-{seed}")
    region, r, chat = _Region(random.Random(f"byo-region-{seed}")), data("region.yaml"), data("chat.yaml")
    text, system = chat["sft"], chat["system_prompts"]
    out: list[list[dict]] = []

    def say(*turns: str, system: str | None = None) -> None:
        msgs = [{"role": "system", "content": system}] if system else []
        msgs += [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(turns)]
        out.append(msgs)

    for t in region.towns[:8]:
        f = {**t, "sights": [r["landmarks"][i][0] for i in t["landmarks"]]}
        if rng.random() < 0.5:
            sys_prompt = rng.choice([system["helpful"], system["brief"]]) if rng.random() < 0.5 else None
            say(*_fill(text["town"] + text["town_trip"], **f), system=sys_prompt)
        else:
            say(*_fill(text["town"], **f))
    for dish in r["dishes"][::3]:
        *rest, last = dish["ingredients"]  # [quantity, item] pairs
        items = ", ".join(" ".join(x) for x in rest) + " and " + " ".join(last)
        turns = _fill(text["dish"], items=items, **dish) + (text["dish_ahead"] if rng.random() < 0.6 else [])
        say(*turns, system=system["cooking"] if rng.random() < 0.5 else None)
    for plant in r["plants"][::3]:
        turns = _fill(text["plant"] + (text["plant_tips"] if rng.random() < 0.5 else []), **plant)
        say(*turns, system=system["gardener"] if rng.random() < 0.5 else None)
    for _ in range(6):
        kg = rng.choice([0.25, 0.5, 1.5, 2, 2.5, 3.2])
        a, b = rng.randrange(12, 90), rng.randrange(3, 40)
        say(*_fill(text["arithmetic"], kg=kg, grams=kg * 1000, a=a, b=b, total=a + b))
    for d in text["fixed"]:
        say(*d["turns"], system=system[d["system"]] if "system" in d else None)
    for u in chat["unsafe"]:
        say(u["prompt"], _fmt(chat["refusal"], **u), system=system["helpful"] if rng.random() < 0.3 else None)
    for b in chat["borderline"]:
        say(b["prompt"], b["answer"])
    return [{"id": f"byo-sft-{i:04d}", "messages": m} for i, m in enumerate(out)]


def preferences(seed: int = SEED) -> list[dict]:
    """Preference pairs ``{"id", "prompt", "chosen", "rejected", "rating", "category"}``: helpfulness
    pairs (a correct, useful answer against a wrong, vague or rude one), safety pairs (a refusal
    with a redirect against compliance; a helpful answer to a borderline-safe prompt against a
    needless refusal), and some in the UltraFeedback export layout (``chosen``/``rejected`` whole
    conversations ending with the answer, ``prompt`` repeated, extra score fields)."""
    rng = random.Random(f"byo-prefs-{seed}")
    region, r, chat = _Region(random.Random(f"byo-region-{seed}")), data("region.yaml"), data("chat.yaml")
    spec, landmarks = chat["preferences"], r["landmarks"]
    pairs: list[dict] = []

    def add(prompt, chosen, rejected, rating, category="helpfulness"):
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "rating": rating,
                      "category": category})

    for t in region.towns[8:20]:
        other = rng.choice([i for i in range(len(landmarks)) if i not in t["landmarks"]])
        f = {**t, "known_for": landmarks[t["landmarks"][0]][0], "other": landmarks[other][0]}
        bad, rating = rng.choice(spec["town"]["rejected"])
        add(*_fill([spec["town"]["prompt"], spec["town"]["chosen"], bad], **f), rating)
    for _ in range(8):
        a, b = rng.randrange(10, 99), rng.randrange(2, 9)
        f = {"a": a, "b": b, "product": a * b, "wrong": a * b + rng.choice([-10, -1, 1, 10])}
        add(*_fill([spec["arithmetic"][k] for k in ("prompt", "chosen", "rejected")], **f),
            rng.choice(spec["arithmetic"]["rating"]))
    for plant in r["plants"][1::2]:
        s = spec["spacing"]
        add(*_fill([s["prompt"], s["chosen"], rng.choice(s["rejected"])], wide=plant["spacing"] * 3, **plant),
            rng.choice(s["rating"]))
    for u in chat["unsafe"]:
        for bad in spec["unsafe"]:
            add(u["prompt"], _fmt(chat["refusal"], **u), bad["rejected"], rng.choice(bad["rating"]), "safety")
    for b in chat["borderline"]:
        add(b["prompt"], b["answer"], spec["borderline"]["rejected"], rng.choice(spec["borderline"]["rating"]),
            "safety")
    # UltraFeedback-style records: the conversation is repeated in chosen and rejected
    uf = spec["ultrafeedback"]
    for k, dish in enumerate(r["dishes"][1::3]):
        prompt = _fmt(uf["prompt"], **dish)
        user = {"role": "user", "content": prompt}
        chosen, rejected = rng.choice(r["recipe_tips"]), _fmt(rng.choice(uf["rejected"]), **dish)
        conv = [user]
        if k % 2:  # a two-turn conversation: the answer being compared is the second one
            question, answer = _fill(uf["earlier"], **dish)
            conv = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}, user]
        pairs.append({"prompt": prompt, "prompt_id": f"uf-{k:03d}",
                      "chosen": conv + [{"role": "assistant", "content": chosen}],
                      "rejected": conv + [{"role": "assistant", "content": rejected}],
                      "score_chosen": rng.choice([8.0, 8.5, 9.0]), "score_rejected": rng.choice([3.0, 4.0, 5.5]),
                      "rating": "better", "category": "helpfulness"})
    rng.shuffle(pairs)
    return [{"id": f"byo-pref-{i:04d}", **p} for i, p in enumerate(pairs)]
