"""A seeded knowledge base of fictional places: the "facts of the world" the corpus talks about.

Every entity is a fictional country with a capital, a river, a mountain, a founding year, a
population, a national animal and a main export. Names are built from syllables, so they never
collide with real words the tokenizer or the scorers could confuse.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "k", "kl", "l", "m", "n", "p", "r", "s", "st",
           "t", "th", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ia"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "x", "nd"]

ANIMALS = ["otter", "falcon", "lynx", "heron", "badger", "ibex", "crane", "fox", "seal", "owl",
           "marten", "stork", "hare", "wolf", "bison", "swan"]
EXPORTS = ["copper", "wool", "salt", "amber", "tea", "timber", "glass", "silk", "olives", "tin",
           "paper", "honey", "marble", "rice", "wine", "cotton"]

#: The attributes a fact question can ask about, with the question and answer templates.
#: ``{e}`` is the entity name and ``{v}`` the value; answers are one short sentence.
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "capital": ("What is the capital of {e}?", "The capital of {e} is {v}."),
    "river": ("Which river flows through {e}?", "The {v} river flows through {e}."),
    "mountain": ("What is the highest mountain in {e}?", "The highest mountain in {e} is {v}."),
    "founded": ("In which year was {e} founded?", "{e} was founded in {v}."),
    "animal": ("What is the national animal of {e}?", "The national animal of {e} is the {v}."),
    "export": ("What is the main export of {e}?", "The main export of {e} is {v}."),
}


@dataclass(frozen=True)
class Entity:
    """One fictional country and its facts."""

    name: str
    capital: str
    river: str
    mountain: str
    founded: int
    population: int
    animal: str
    export: str

    def value(self, attribute: str) -> str:
        return str(getattr(self, attribute))

    def to_dict(self) -> dict:
        return asdict(self)


def make_name(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


def build_knowledge_base(seed: int, n_entities: int) -> list[Entity]:
    """The same ``seed`` gives the same entities; all names are distinct."""
    if n_entities < 1:
        raise ValueError(f"world.n_entities must be >= 1, got {n_entities}")
    rng = random.Random(f"kb-{seed}")
    used: set[str] = set()

    def fresh(syllables: int) -> str:
        for _ in range(1000):
            name = make_name(rng, syllables)
            if name not in used and len(name) >= 4:
                used.add(name)
                return name
        raise RuntimeError("name space exhausted; lower world.n_entities")

    entities = []
    for _ in range(n_entities):
        entities.append(Entity(
            name=fresh(rng.choice([2, 3])),
            capital=fresh(2),
            river=fresh(2),
            mountain="Mount " + fresh(2),
            founded=rng.randint(900, 1950),
            population=rng.randint(20, 9000) * 1000,
            animal=rng.choice(ANIMALS),
            export=rng.choice(EXPORTS),
        ))
    return entities


def article(entity: Entity, rng: random.Random) -> str:
    """An encyclopedia-style article stating the entity's facts (several phrasings)."""
    e = entity
    facts = [ATTRIBUTES[a][1].format(e=e.name, v=e.value(a)) for a in ATTRIBUTES]
    extra = [
        f"About {e.population:,} people live in {e.name}.",
        f"Most people in {e.name} live near the {e.river} river, and many of them work with {e.export}.",
        f"Travellers who visit {e.capital} often climb {e.mountain} on a clear day.",
        f"The {e.animal} appears on the flag of {e.name}.",
        f"Historians agree that {e.name} was founded in {e.founded}, when settlers reached the {e.river}.",
    ]
    rng.shuffle(facts)
    rng.shuffle(extra)
    intro = f"{e.name} is a small country known for its {e.export} and its {e.animal}s."
    body = facts[:4] + extra[:3] + facts[4:] + extra[3:]
    paragraphs = [intro + " " + " ".join(body[:4]), " ".join(body[4:])]
    return "\n\n".join(paragraphs)
