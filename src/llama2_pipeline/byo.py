"""``llama2-pipeline examples``: small bring-your-own-data files, one for every swap point.

    llama2-pipeline examples [--out DIR] [--seed N] [--force]

writes into DIR (default ``data/01_raw/byo``), each file atomically:

* ``corpus/part-0000{0,1}.parquet``: a raw corpus (columns ``id``, ``text``, ``source``) for
  ``raw_corpus``; ``corpus.jsonl``: the same documents as JSON lines; ``pii_canaries.jsonl``:
  empty (nothing planted to check for);
* ``sft_dialogues.jsonl``: ``{"id", "messages": [...]}`` dialogues for ``sft_dialogues_raw``;
* ``preferences.jsonl``: preference pairs for ``user_preferences``;
* ``README.md``: each file's schema and how ``kedro run --env byo`` (``conf/byo/``) uses them.

The text is written by this module (no download, no dataset copied): a small made-up region of
market towns, kitchens, gardens and shops described by templates, drawn with a fixed seed, so the
files are the same on every machine. It is enough for the smoke profile's data_processing,
tokenizer, pretrain, sft and reward stages; a few documents are deliberately dirty (a duplicate, a
near-duplicate, fragments, keyword spam, a contact address) to show what cleaning removes.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from llama2_pipeline.io_utils import atomic_path, write_jsonl

DEFAULT_OUT = "data/01_raw/byo"
SEED = 1234
FILES = ("corpus", "corpus.jsonl", "pii_canaries.jsonl", "sft_dialogues.jsonl", "preferences.jsonl", "README.md")

# ---------------------------------------------------------------------------------------------
# The made-up region: towns, people, dishes, plants, birds, products (shared by every file, so
# the SFT answers and preference pairs agree with the corpus)
# ---------------------------------------------------------------------------------------------

_TOWN_HEADS = ["Ash", "Bram", "Cal", "Dun", "Elm", "Fen", "Glen", "Hart", "Kings", "Lang", "Mar", "North",
               "Oak", "Pen", "Red", "Stan", "Thorn", "Wil", "Wood", "Yar", "Brook", "Cold", "Fair", "Holm"]
_TOWN_TAILS = ["bury", "ford", "ham", "ley", "mouth", "stead", "wick", "ton", "field", "combe"]
_RIVERS = ["Avel", "Brenn", "Colder", "Dee", "Esk", "Frome", "Loddon", "Mease", "Otter", "Tavy", "Wensum", "Yeo"]
_CITIES = ["Carrick", "Lowmoor", "Saltham", "Westerby", "Dunmore", "Pellham"]
_FIRST = ["Anna", "Ben", "Clara", "David", "Esther", "Farid", "Grace", "Hugo", "Imogen", "Jonah", "Kiran", "Lena",
          "Marcus", "Nadia", "Owen", "Priya", "Quentin", "Rosa", "Samir", "Tessa", "Umar", "Vera", "Wyn", "Zoe"]
_LAST = ["Ashdown", "Bellamy", "Carver", "Dalton", "Ellery", "Fairbairn", "Gilchrist", "Hale", "Iqbal", "Jessop",
         "Kettering", "Lowry", "Marsh", "Nolan", "Okafor", "Pritchard", "Quayle", "Redmond", "Sato", "Thorne"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_LANDMARKS = [
    ("the old stone bridge", "It has five arches and was widened for carts in the eighteenth century"),
    ("the covered market hall", "Its cast iron roof shelters about forty stalls on market day"),
    ("the clock tower", "The clock still has to be wound by hand every eighth day"),
    ("the museum of rural life", "Its best room shows ploughs, butter churns and a restored shepherd's hut"),
    ("the ruined priory", "Only the west front and two walls of the cloister survive"),
    ("the canal basin", "Narrowboats moor there in summer and a small cafe serves tea on the towpath"),
    ("the windmill on the ridge", "Volunteers open it on the first Sunday of the month and grind flour for sale"),
    ("the public gardens", "The glasshouse holds a collection of ferns that a local doctor started in 1880"),
    ("the parish church", "Its tower can be climbed in good weather and gives a view over three valleys"),
    ("the lido", "The open air pool is heated by solar panels and stays open until the middle of September"),
    ("the railway viaduct", "A footpath runs beneath its twenty arches along the river meadows"),
    ("the weavers' cottages", "The long upper windows once let in light for the looms"),
    ("the town library", "It occupies a former corn exchange and keeps a fine collection of old maps"),
    ("the castle mound", "Nothing stands on it now, but the earthworks are easy to trace from the top"),
    ("the harbour wall", "Anglers line it at high tide and the lighthouse at the end is painted every spring"),
    ("the botanical walk", "Labels along the path name more than two hundred kinds of tree and shrub"),
]
_SPECIALITIES = ["cheese scones", "smoked trout", "apple cake", "lamb hotpot", "cider", "oatcakes", "plum jam",
                 "crab sandwiches", "honey", "pork pies", "blackberry crumble", "rye bread"]

# name, kind, serves, ingredients (quantity, item), a note used in the introduction
_DISHES = [
    ("Leek and potato soup", "soup", 4, [("2", "large leeks"), ("500 g", "floury potatoes"),
     ("1 litre", "vegetable stock"), ("30 g", "butter"), ("100 ml", "single cream")],
     "a winter standby that costs very little and freezes well"),
    ("Roasted tomato soup", "soup", 4, [("1 kg", "ripe tomatoes"), ("1", "red onion"), ("3 cloves", "garlic"),
     ("2 tbsp", "olive oil"), ("600 ml", "chicken or vegetable stock")],
     "the best way to use tomatoes that are a little too soft for salads"),
    ("Spiced lentil soup", "soup", 6, [("250 g", "red lentils"), ("1", "onion"), ("2", "carrots"),
     ("1 tsp", "ground cumin"), ("1.5 litres", "stock"), ("1", "lemon")], "filling, cheap and ready in half an hour"),
    ("Apple and oat crumble", "bake", 6, [("6", "cooking apples"), ("120 g", "plain flour"), ("80 g", "rolled oats"),
     ("100 g", "cold butter"), ("90 g", "light brown sugar")], "a pudding that everybody in the family agrees on"),
    ("Cheese and chive scones", "bake", 8, [("250 g", "self-raising flour"), ("60 g", "butter"),
     ("100 g", "mature cheddar"), ("1 small bunch", "chives"), ("150 ml", "milk")],
     "quick enough to bake while the kettle boils for the second time"),
    ("Lemon drizzle cake", "bake", 10, [("225 g", "softened butter"), ("225 g", "caster sugar"), ("4", "eggs"),
     ("225 g", "self-raising flour"), ("2", "unwaxed lemons")], "the cake that sells out first at every village fete"),
    ("Chickpea and spinach stew", "stew", 4, [("2 tins", "chickpeas"), ("1 tin", "chopped tomatoes"),
     ("200 g", "spinach"), ("1", "onion"), ("1 tsp", "smoked paprika")],
     "a store cupboard supper with lots of flavour"),
    ("Beef and ale stew", "stew", 6, [("1 kg", "stewing beef"), ("500 ml", "brown ale"), ("3", "carrots"),
     ("2", "onions"), ("2 sprigs", "thyme")], "slow food for a cold Sunday, better still the next day"),
    ("Summer vegetable stew", "stew", 4, [("2", "courgettes"), ("1", "aubergine"), ("2", "peppers"),
     ("4", "tomatoes"), ("1 handful", "basil")], "a way to use a glut from the vegetable patch"),
    ("Spaghetti with garlic and chilli", "pasta", 2, [("200 g", "spaghetti"), ("4 cloves", "garlic"),
     ("1", "red chilli"), ("4 tbsp", "olive oil"), ("1 handful", "parsley")], "a supper made from almost nothing"),
    ("Baked macaroni with leeks", "pasta", 4, [("300 g", "macaroni"), ("2", "leeks"), ("40 g", "butter"),
     ("40 g", "plain flour"), ("600 ml", "milk"), ("150 g", "cheddar")], "comfort food that reheats well"),
    ("Pasta with peas and mint", "pasta", 3, [("250 g", "short pasta"), ("300 g", "frozen peas"),
     ("1 small bunch", "mint"), ("50 g", "parmesan"), ("1", "lemon")], "fresh and green, ready in fifteen minutes"),
    ("Wholemeal sandwich loaf", "bread", 12, [("500 g", "wholemeal bread flour"), ("7 g", "dried yeast"),
     ("10 g", "salt"), ("350 ml", "warm water"), ("1 tbsp", "honey")], "a reliable everyday loaf for beginners"),
    ("Rosemary focaccia", "bread", 8, [("500 g", "strong white flour"), ("7 g", "dried yeast"), ("10 g", "salt"),
     ("400 ml", "warm water"), ("5 tbsp", "olive oil"), ("2 sprigs", "rosemary")],
     "a soft, dimpled bread that is hard to get wrong"),
    ("Soda bread", "bread", 8, [("450 g", "plain flour"), ("1 tsp", "bicarbonate of soda"), ("1 tsp", "salt"),
     ("400 ml", "buttermilk")], "bread without yeast, from bowl to table in under an hour"),
    ("Buttermilk pancakes", "pancake", 4, [("200 g", "plain flour"), ("1 tsp", "baking powder"), ("2", "eggs"),
     ("300 ml", "buttermilk"), ("25 g", "melted butter")], "a slow breakfast for a weekend morning"),
    ("Potato rosti", "pancake", 2, [("3", "large potatoes"), ("1", "small onion"), ("30 g", "butter"),
     ("1 pinch", "nutmeg")], "crisp outside and soft inside, good with a fried egg"),
    ("Courgette fritters", "pancake", 4, [("3", "courgettes"), ("100 g", "feta"), ("2", "eggs"),
     ("60 g", "plain flour"), ("1 handful", "dill")], "what to make when the courgettes get ahead of you"),
]
_METHOD = {
    "soup": ["Melt the fat in a large pan and soften the onions or leeks over a low heat for about ten minutes.",
             "Add the remaining vegetables, stir well and season with salt and pepper.",
             "Pour in the stock, bring it to the boil, then lower the heat and simmer until everything is tender.",
             "Blend the soup until smooth, adding a splash of water if it seems too thick.",
             "Taste, adjust the seasoning and serve with bread and butter."],
    "bake": ["Heat the oven to {temp} degrees and line or grease the tin.",
             "Rub the butter into the flour with your fingertips until it looks like breadcrumbs.",
             "Stir in the sugar or cheese, then bring the mixture together with the liquid.",
             "Bake for {minutes} minutes, until golden and firm to the touch.",
             "Leave it to cool for a few minutes before you cut it."],
    "stew": ["Brown the meat or soften the onions in a heavy casserole, in batches if necessary.",
             "Add the spices and cook for a minute so that they release their aroma.",
             "Add the vegetables and the liquid, scrape the bottom of the pan and bring it to a simmer.",
             "Cover and cook gently for {minutes} minutes, stirring now and then.",
             "Check the seasoning and let it rest for ten minutes before serving."],
    "pasta": ["Bring a large pan of well salted water to the boil and cook the pasta until just tender.",
              "Meanwhile warm the oil or butter in a wide pan and add the flavourings.",
              "Keep a cup of the cooking water before you drain the pasta.",
              "Toss the pasta with the sauce, loosening it with some of the reserved water.",
              "Serve at once with the herbs and cheese scattered over the top."],
    "bread": ["Mix the flour, yeast and salt in a large bowl, then add the liquid and stir to a rough dough.",
              "Knead for about ten minutes, until the dough is smooth and springs back when pressed.",
              "Cover and leave it in a warm place until it has doubled in size.",
              "Shape the dough, put it in the tin and let it rise again while the oven heats to {temp} degrees.",
              "Bake for {minutes} minutes; the loaf is done when it sounds hollow underneath."],
    "pancake": ["Grate or mix the main ingredients and squeeze out any excess water.",
                "Stir in the remaining ingredients and season well to make a thick mixture.",
                "Heat a little butter or oil in a heavy frying pan over a medium heat.",
                "Cook spoonfuls of the mixture for two or three minutes on each side.",
                "Keep the first batch warm in a low oven while you cook the rest."],
}
_RECIPE_TIPS = [
    "If you have time, make it a day ahead: the flavours settle and improve overnight.",
    "A squeeze of lemon juice at the end brightens almost any savoury dish.",
    "Weigh the ingredients rather than using cups; the results are far more consistent.",
    "Leftovers keep for three days in the fridge in a covered container.",
    "Children enjoy helping with this one, especially the mixing and the tasting.",
    "Use whatever herbs you have on the windowsill; parsley, thyme and chives all work.",
    "Double the quantities and freeze half in portions for busy evenings.",
    "Season in stages as you cook rather than all at once at the end.",
]

# plant, sow month index, harvest month index, spacing in cm, sun, water, one specific tip
_PLANTS = [
    ("tomatoes", 2, 7, 45, "full sun", "water deeply twice a week",
     "Pinch out the side shoots of cordon varieties so the plant puts its energy into the fruit."),
    ("runner beans", 4, 7, 30, "full sun", "keep the roots moist once the flowers appear",
     "Pick the pods young and often; the more you pick, the more the plants produce."),
    ("garlic", 9, 6, 15, "full sun", "water only in dry spells",
     "Plant the cloves in autumn with the pointed end up, just below the surface."),
    ("potatoes", 3, 6, 35, "full sun", "water well when the tubers start to form",
     "Earth up the stems as they grow to stop the new potatoes turning green."),
    ("lettuce", 3, 5, 25, "light shade in summer", "water little and often",
     "Sow a short row every two weeks for a steady supply instead of a glut."),
    ("carrots", 3, 7, 5, "full sun", "water evenly so the roots do not split",
     "Sow thinly in light soil and cover the row with fine mesh against carrot fly."),
    ("courgettes", 4, 6, 90, "full sun", "water generously at the base",
     "Harvest them at the length of your hand; left longer they turn into marrows."),
    ("strawberries", 7, 5, 40, "full sun", "water in the morning and keep the fruit dry",
     "Tuck straw under the ripening fruit to keep it clean and away from slugs."),
    ("lavender", 3, 6, 45, "full sun", "water rarely once established",
     "Trim the plants after flowering, but never cut back into old bare wood."),
    ("raspberries", 10, 6, 45, "sun or light shade", "mulch well to keep the roots cool",
     "Cut the canes that have fruited down to the ground once harvest is over."),
    ("onions", 2, 7, 10, "full sun", "stop watering once the leaves fall over",
     "Lift the bulbs on a dry day and let the skins cure in the sun for a week."),
    ("spinach", 2, 4, 15, "light shade", "keep the soil moist to stop it bolting",
     "Pick the outer leaves and the plant will keep producing for weeks."),
    ("beetroot", 3, 6, 10, "full sun", "water every ten days in dry weather",
     "Twist off the leaves rather than cutting them so the roots do not bleed."),
    ("sweet peas", 9, 5, 20, "full sun", "water well in warm spells",
     "Cut the flowers every few days; once they set seed the plants stop flowering."),
    ("blueberries", 10, 7, 120, "sun or light shade", "water with rainwater, not tap water",
     "They need acid soil, so grow them in pots of ericaceous compost if your soil is chalky."),
    ("parsnips", 2, 10, 15, "full sun", "rarely need watering",
     "Use fresh seed every year, because parsnip seed loses its vigour quickly."),
    ("rhubarb", 10, 3, 90, "sun or light shade", "water well in its first summer",
     "Do not pull any stalks in the first year so that the crown can build up strength."),
    ("kale", 3, 10, 45, "full sun", "water in dry spells and firm the soil around the stems",
     "Cover the plants with netting, because pigeons find the leaves irresistible in winter."),
    ("basil", 3, 6, 20, "a warm sheltered spot", "water in the morning, never in the evening",
     "Pinch out the growing tips to keep the plant bushy and stop it flowering."),
    ("sunflowers", 3, 7, 45, "full sun", "water at the base until they are established",
     "Tie tall varieties to a stake before the first summer storm, not after it."),
]

_BIRDS = [("grey heron", "standing motionless in the shallows"), ("kingfisher", "flashing low along the bank"),
          ("little egret", "feeding at the edge of the pool"), ("buzzard", "circling over the wood on the thermals"),
          ("skylark", "singing high above the stubble field"), ("reed warbler", "chattering deep in the reeds"),
          ("great crested grebe", "diving close to the far bank"), ("lapwing", "tumbling over the wet meadow"),
          ("goldfinch", "feeding on thistle heads by the gate"), ("song thrush", "singing from the top of an ash tree"),
          ("marsh harrier", "quartering low over the reed bed"), ("teal", "dabbling in a tight flock"),
          ("wren", "scolding from the bramble patch"), ("green woodpecker", "laughing from the edge of the orchard"),
          ("curlew", "calling from the mudflats"), ("barn owl", "hunting along the hedge at dusk"),
          ("stonechat", "perched on top of a gorse bush"), ("sand martin", "flying in and out of the riverbank"),
          ("redwing", "stripping berries from the hawthorn"), ("cormorant", "drying its wings on a post")]
_HABITATS = ["the reed beds south of {town}", "the gravel pits beyond {town}", "the water meadows below {town}",
             "the old orchard near {town}", "the estuary path out of {town}", "the heath above {town}",
             "the wood on the far side of {town}", "the flooded fields east of {town}"]
_WEATHER = ["a still grey morning with mist lying on the water", "bright sunshine and a cold north wind",
            "light drizzle that cleared by mid morning", "a warm, humid evening with thunder in the distance",
            "hard frost and a clear blue sky", "low cloud and a fresh breeze from the west",
            "a mild afternoon with sunny spells", "steady rain until about ten o'clock"]

# product, price, pros, cons
_PRODUCTS = [
    ("Brightwell electric kettle", 35,
     ["boils a full litre in under three minutes", "the lid opens wide enough to clean inside",
      "the water window is easy to read from across the kitchen", "it switches off reliably the moment it boils"],
     ["the handle gets warm near the top", "it is louder than my old one", "the cord is rather short"]),
    ("Trailmaster hiking boots", 120,
     ["they were comfortable straight out of the box", "my feet stayed dry after a day of rain",
      "the grip on wet rock is excellent", "the laces stay tied all day"],
     ["they are heavier than they look", "the tongue rubs a little on steep descents",
      "they take a long time to dry inside"]),
    ("Lumen bicycle lamp", 28,
     ["the beam is bright enough for unlit lanes", "it charges from a phone charger in two hours",
      "the mount fits both thin and thick handlebars", "the battery lasts a week of commuting"],
     ["the mode button is hard to find with gloves on", "the rubber strap feels flimsy",
      "there is no battery level indicator"]),
    ("Hearth cast iron pan", 45,
     ["it holds heat beautifully for searing", "it goes from the hob straight into the oven",
      "it came well seasoned and nothing sticks", "it should last for decades"],
     ["it is very heavy to lift with one hand", "the handle gets hot, so you need a cloth",
      "it needs drying at once after washing"]),
    ("Quietbreeze desk fan", 40,
     ["it is genuinely quiet on the lowest setting", "it tilts and turns smoothly", "the timer is useful at night",
      "the guard comes off for cleaning"],
     ["the highest setting is noisy", "the remote control is tiny and easy to lose", "the base wobbles on carpet"]),
    ("Fieldcraft rucksack", 65,
     ["the back panel keeps my shoulders cool", "there are plenty of pockets without clutter",
      "the rain cover tucks into its own pouch", "the hip belt takes the weight off my back"],
     ["the side pockets are too tight for a large bottle", "the zips are a little stiff",
      "it only comes in two colours"]),
    ("Pagewise e-reader", 110,
     ["the screen is easy on the eyes in bright sunlight", "the battery lasts for weeks",
      "it is light enough to hold in one hand in bed", "the warm light setting helps at night"],
     ["the menus are slow to respond", "it does not open some document formats", "the case is sold separately"]),
    ("Greenshoot propagator", 25,
     ["the seeds came up days sooner than on the windowsill", "the vents make it easy to control humidity",
      "the base holds water without leaking", "it is large enough for three seed trays"],
     ["the lid cracked when I dropped it", "it has no heating element at this price",
      "the lid mists up so you cannot see in"]),
    ("Comfortstep slippers", 22,
     ["the sole is thick enough to walk in the garden", "they are warm without making my feet sweat",
      "they wash well at a low temperature", "the sizing is accurate"],
     ["the heel flattens after a few months", "they are slippery on a tiled floor",
      "the stitching came loose on one"]),
    ("Clearview window cleaner kit", 18,
     ["it leaves no streaks on the glass", "the extension pole reaches upstairs windows",
      "the squeegee blade is easy to replace", "it packs away neatly"],
     ["the pole joints work loose", "the bucket is small", "the cloth sheds fibres when new"]),
    ("Steadfast cordless drill", 85,
     ["it has plenty of power for masonry", "the battery charges in an hour",
      "the light near the chuck is genuinely helpful", "it comes with a sturdy case"],
     ["it is heavy to use overhead", "the clutch settings are hard to read", "only one battery is included"]),
    ("Morningcup coffee grinder", 55,
     ["the grind is very even", "it is easy to adjust from fine to coarse", "it is quieter than a blade grinder",
      "the hopper holds enough for a week"],
     ["static makes the grounds cling to the container", "it is slow for a large cafetiere",
      "cleaning the burrs is fiddly"]),
]
_VERDICTS = {
    5: ["I would buy it again without hesitation.", "Highly recommended to anyone thinking about it.",
        "It has exceeded every expectation I had."],
    4: ["A very good buy with a couple of small faults.", "I am happy with it and would recommend it.",
        "Not perfect, but very good value for the money."],
    3: ["It does the job, but I expected a little more at this price.", "An average product: fine, not special.",
        "I am keeping it, though I would look around before buying again."],
    2: ["I was disappointed and will probably replace it.", "It works, just about, but I would not recommend it.",
        "The faults outweigh the good points for me."],
}

_GUIDES = [
    ("How to fix a bicycle puncture", [
        "Take the wheel off the bike and let out any air that is left in the tube.",
        "Use two tyre levers to ease one side of the tyre over the rim, working your way round.",
        "Pull out the inner tube and pump a little air into it so you can hear or feel the leak.",
        "Roughen the area around the hole with sandpaper, spread a thin layer of glue and wait until it turns dull.",
        "Press the patch on firmly and hold it for a minute while the bond forms.",
        "Run your fingers carefully around the inside of the tyre to find whatever caused the puncture.",
        "Refit the tube, push the tyre back onto the rim with your thumbs and pump it to the pressure printed "
        "on the sidewall."]),
    ("How to descale a kettle", [
        "Fill the kettle halfway with equal parts of water and white vinegar, or use the juice of two lemons.",
        "Bring it to the boil, switch it off and leave the mixture to stand for an hour.",
        "Pour the liquid away and wipe the inside gently with a soft cloth.",
        "Scale on the element usually lifts off easily once it has softened.",
        "Fill the kettle with clean water, boil it and throw the water away, then repeat once more.",
        "In a hard water area, descaling every month keeps the kettle quick and quiet."]),
    ("How to write a short cover letter", [
        "Address the letter to a named person whenever you can find out who will read it.",
        "Open with the job you are applying for and one sentence about why it interests you.",
        "In the middle paragraph, give two examples of things you have done that match what the advert asks for.",
        "Keep each example concrete: what the task was, what you did, and what changed as a result.",
        "Close by saying when you are available for an interview and thank the reader for their time.",
        "Read it aloud before you send it; awkward sentences are much easier to hear than to see."]),
    ("How to bleed a radiator", [
        "Turn the heating off and wait until the radiators are cool enough to touch.",
        "Hold a cloth under the small valve at the top corner of the radiator.",
        "Turn the valve anticlockwise with a radiator key, about a quarter of a turn, and listen for hissing air.",
        "Close the valve as soon as water starts to dribble out instead of air.",
        "Check the pressure gauge on the boiler and top it up if it has dropped below the recommended level.",
        "Turn the heating back on and feel whether the radiator is now warm all the way to the top."]),
    ("How to start a compost heap", [
        "Choose a level spot on bare soil, so that worms and other creatures can move in from below.",
        "Mix green material such as grass cuttings and vegetable peelings with brown material such as "
        "cardboard and dry leaves.",
        "Aim for roughly equal amounts of green and brown by volume; too much grass turns the heap slimy.",
        "Keep out meat, fish, cooked food and dog waste, which attract rats and smell.",
        "Turn the heap with a fork every few weeks to let air in and speed things up.",
        "The compost is ready when it is dark and crumbly and smells like a woodland floor, usually within a year."]),
    ("How to sharpen a kitchen knife on a whetstone", [
        "Soak the stone in water for ten minutes if it is a water stone, then set it on a damp cloth so it "
        "cannot slide.",
        "Hold the blade at an angle of about fifteen degrees to the stone.",
        "Push the edge across the stone from heel to tip as if you were slicing a thin layer off it.",
        "Count your strokes and give the other side of the blade the same number.",
        "Move to the finer side of the stone and repeat with lighter pressure.",
        "Test the edge on a sheet of paper; a sharp knife cuts it cleanly without tearing."]),
    ("How to prepare for a long walk", [
        "Check the forecast on the evening before and again in the morning.",
        "Plan the route with a paper map as well as your phone, and tell someone where you are going.",
        "Wear boots you have already walked in, with thin socks under thick ones if you blister easily.",
        "Carry more water than you expect to need, along with food that will not crush in the bag.",
        "Pack a waterproof, a warm layer and a small first aid kit even if the day looks fine.",
        "Set a turning back time and keep to it, whether or not you have reached the top."]),
    ("How to repot a houseplant", [
        "Water the plant the day before so that the root ball slides out of the old pot in one piece.",
        "Choose a new pot only a few centimetres wider than the old one, with a drainage hole.",
        "Tease out roots that circle the bottom of the root ball with your fingers.",
        "Put fresh compost in the base so the plant sits at the same depth as before.",
        "Fill around the sides, firm gently and water well to settle the compost.",
        "Keep the plant out of direct sun for a week while the roots recover."]),
]

SYSTEM_PROMPTS = [  # short: with the smoke profile's 512-piece tokenizer a long one fills the 128-token rows
    "You are a helpful, honest and safe assistant.",
    "You are a friendly cooking assistant.",
    "You are an experienced gardener.",
    "Answer in at most three sentences.",
]


class _Region:
    """The region's towns and their facts, drawn from ``rng``."""

    def __init__(self, rng: random.Random, n_towns: int = 40):
        names = [h + t for h in _TOWN_HEADS for t in _TOWN_TAILS]
        rng.shuffle(names)
        self.towns = []
        for name in names[:n_towns]:
            self.towns.append({
                "name": name, "river": rng.choice(_RIVERS), "city": rng.choice(_CITIES),
                "km": rng.randrange(8, 70), "minutes": rng.randrange(15, 95, 5),
                "population": rng.randrange(2, 48) * 500 + rng.randrange(0, 500),
                "founded": rng.randrange(1150, 1750), "market_day": rng.choice(_DAYS[:6]),
                "landmarks": rng.sample(range(len(_LANDMARKS)), 3), "speciality": rng.choice(_SPECIALITIES),
                "season": rng.choice(["late spring", "early summer", "September", "the first weeks of October"]),
            })

    def person(self, rng: random.Random) -> str:
        return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"


# ---------------------------------------------------------------------------------------------
# Corpus documents
# ---------------------------------------------------------------------------------------------

def _travel(t: dict, rng: random.Random) -> str:
    n = t["name"]
    intro = rng.choice([
        f"{n} is a market town on the River {t['river']}, about {t['km']} kilometres from {t['city']}. "
        f"Around {t['population']:,} people live there, and the centre still follows the street plan laid out "
        f"when the town received its charter in {t['founded']}.",
        f"Few visitors to {t['city']} make the short trip to {n}, which is a pity. The town sits in a bend of the "
        f"{t['river']}, has a population of roughly {t['population']:,}, and has held a market since {t['founded']}.",
        f"Founded in {t['founded']} where an old drove road crossed the {t['river']}, {n} has grown slowly into a "
        f"town of some {t['population']:,} people. It lies {t['km']} kilometres from {t['city']}.",
    ])
    intro += " " + rng.choice([
        "It is small enough to cross on foot in twenty minutes, yet there is plenty to fill a day.",
        "Its narrow lanes, brick terraces and riverside paths reward anyone who takes their time.",
        "It makes a pleasant base for walking, with footpaths leading out in every direction.",
    ])
    trip = rng.choice([
        f"Trains from {t['city']} take {t['minutes']} minutes and arrive a short walk from the high street. "
        "Parking in the centre is limited, especially on market day, so the train is often easier.",
        f"The journey from {t['city']} by bus or train takes about {t['minutes']} minutes. "
        "If you drive, use the long stay car park by the river rather than circling the square.",
    ])
    sights = []
    for k, i in enumerate(t["landmarks"]):
        place, detail = _LANDMARKS[i]
        lead = ["Start at", "Do not miss", "Finish the day at"][k]
        sights.append(f"{lead} {place}. {detail}.")
    food = rng.choice([
        f"The market is held every {t['market_day']} and is the place to try the local {t['speciality']}. "
        "Arrive before ten if you want the best choice, because the popular stalls sell out quickly.",
        f"On {t['market_day']}s the square fills with stalls. Local people will tell you that nowhere does "
        f"{t['speciality']} quite as well, and it is worth finding out whether they are right.",
    ])
    when = rng.choice([
        f"The best time to visit is {t['season']}, when the weather is usually settled and the town is quiet.",
        f"Locals say {t['season']} is the loveliest time of year here, and the footpaths are at their driest then.",
    ])
    return "\n\n".join([f"{n}: a short guide for visitors", intro, trip, " ".join(sights), food, when])


def _recipe(dish: tuple, rng: random.Random) -> str:
    name, kind, serves, ingredients, note = dish
    temp, minutes = rng.choice([180, 190, 200, 220]), rng.choice([20, 25, 30, 35, 40, 45, 90, 120])
    if kind in ("bake", "bread"):
        minutes = rng.choice([20, 25, 30, 35, 40])
    intro = rng.choice([
        f"This is {note}. The quantities below serve {serves}, and the method is easy to scale up or down.",
        f"I make this often because it is {note}. It serves {serves} people generously.",
        f"Here is my version, {note}. Expect enough for {serves}, with perhaps a little left over.",
    ])
    lines = [name, intro, "Ingredients:\n" + "\n".join(f"- {q} {item}" for q, item in ingredients)]
    steps = [s.format(temp=temp, minutes=minutes) for s in _METHOD[kind]]
    lines.append("Method:\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1)))
    lines.append(" ".join(rng.sample(_RECIPE_TIPS, 2)))
    return "\n\n".join(lines)


def _garden(plant: tuple, rng: random.Random) -> str:
    name, sow, harvest, spacing, sun, water, tip = plant
    title = rng.choice([f"Growing {name}", f"A beginner's guide to {name}", f"Notes from the allotment: {name}"])
    body = [
        rng.choice([f"Sow or plant {name} in {_MONTHS[sow]}, and you can expect to start harvesting in "
                    f"{_MONTHS[harvest]}.",
                    f"{name.capitalize()} go in during {_MONTHS[sow]}; with luck the first crop is ready in "
                    f"{_MONTHS[harvest]}."]),
        f"Give the plants {sun} and leave about {spacing} centimetres between them, so that air can move freely.",
        f"As for watering, {water}. Overwatering does as much harm as drought, because roots need air as well.",
        rng.choice(["Dig in plenty of well rotted compost before planting; it feeds the soil and holds moisture.",
                    "A mulch of leaf mould or straw keeps weeds down and saves a great deal of watering.",
                    "Rotate crops around the beds each year to keep pests and diseases from building up."]),
        tip,
        rng.choice(["Slugs are the main enemy in a wet year, so check the young plants after dark with a torch.",
                    "Birds can strip young plants overnight; a simple net on hoops solves the problem.",
                    "Keep a notebook of sowing dates and results, and next year will be easier."]),
    ]
    return title + "\n\n" + " ".join(body[:3]) + "\n\n" + " ".join(body[3:])


def _plural(bird: str) -> str:
    return bird if bird == "teal" else bird + "es" if bird.endswith("ch") else bird + "s"


def _journal(region: _Region, rng: random.Random) -> str:
    t = rng.choice(region.towns)
    place = rng.choice(_HABITATS).format(town=t["name"])
    day, month = rng.randrange(1, 29), rng.choice(_MONTHS)
    birds = rng.sample(_BIRDS, rng.randrange(4, 7))
    seen = [f"{k} {_plural(b)} {what}" if (k := rng.randrange(1, 14)) > 1 else f"a {b} {what}"
            for b, what in birds]
    head = f"Field notes, {day} {month}: {place}"
    p1 = (f"I walked out to {place} with {region.person(rng)}. We had {rng.choice(_WEATHER)}, "
          "and the water level was "
          f"{rng.choice(['high after the recent rain', 'lower than usual', 'about normal for the season'])}.")
    p2 = "Highlights of the walk: " + "; ".join(seen) + "."
    p3 = rng.choice([
        "On the way back we stopped at the hide for half an hour, but it was quiet apart from the ducks.",
        "The path along the ditch was muddy, so boots are needed for the next few weeks.",
        "A volunteer told us that the new scrape has already attracted waders, so we will come back at dawn.",
        "We counted more species than on the same walk last year, which is encouraging after the hard winter.",
    ])
    p4 = rng.choice(["Total time on site was about three hours.", "We left as the light began to fade.",
                     "Next visit planned for the end of the month."])
    return "\n\n".join([head, p1, p2, p3 + " " + p4])


def _news(region: _Region, rng: random.Random, kind: str) -> str:
    t = rng.choice(region.towns)
    n, who = t["name"], region.person(rng)
    day = rng.choice(_DAYS)
    if kind == "council":
        amount = rng.randrange(12, 480) * 1000
        project = rng.choice(["resurfacing the market square", "repairing the footbridge over the " + t["river"],
                              "new lighting along the river path", "a play area in the public gardens",
                              "extending the library's opening hours", "planting trees along the bypass",
                              "a new roof for the scout hut", "public toilets by the bus station"])
        head = rng.choice([f"Council approves funding for {project}", f"£{amount:,} agreed for {project}",
                           f"{n} councillors back {project}"])
        body = rng.choice([
            f"Councillors in {n} voted on {day} evening to spend £{amount:,} on {project}. The decision followed "
            f"a consultation in which more than {rng.randrange(120, 900)} residents took part.",
            f"After a long debate on {day}, the town council of {n} agreed a budget of £{amount:,} for {project}. "
            "Officers had warned that costs would rise if the decision was put off again.",
            f"Plans for {project} in {n} moved a step closer on {day}, when the council agreed to release "
            f"£{amount:,} from its reserves by {rng.randrange(7, 13)} votes to {rng.randrange(1, 6)}.",
        ])
        quote = rng.choice([
            f"{who}, who chairs the finance committee, said the work was overdue and would be finished before "
            f"{rng.choice(['the end of the year', 'next summer', 'the autumn fair'])}.",
            f"Speaking after the vote, {who} said residents had asked for this for years and deserved to see it done.",
            f"{who}, the town clerk, said contractors would be invited to bid within a month.",
        ])
        dissent = rng.choice([
            "Not everyone agreed: two members argued that the money would be better spent on the roads.",
            "One member abstained, saying the council should wait for a grant from the county.",
            "Opponents said the scheme was too expensive for a town of this size.",
        ])
        close = rng.choice([
            "Residents can see the plans at the town hall during office hours.",
            "The full report is available in the library and on the council's noticeboard.",
            "A public meeting to discuss the details will be held next month.",
        ])
        return f"{head}\n\n{body}\n\n{quote} {dissent}\n\n{close}"
    if kind == "sport":
        other = rng.choice([o for o in region.towns if o is not t])["name"]
        a, b = rng.randrange(0, 5), rng.randrange(0, 4)
        sport = rng.choice(["football", "hockey"])
        result = "won" if a > b else "drew" if a == b else "lost"
        return (f"{n} {result} {a}-{b} against {other}\n\n"
                f"The {sport} club of {n} {result} {a}-{b} at home to {other} on {day}, in front of a crowd of about "
                f"{rng.randrange(80, 600)}. "
                + (f"{who} scored the opening goal midway through the first half after a long run down the left wing."
                   if a else f"The goalkeeper, {who}, made several fine saves to keep the score respectable.")
                + "\n\n"
                + rng.choice(["The visitors pressed hard after the break, but the home defence held firm.",
                              "Rain made the pitch heavy in the second half and both teams tired late on.",
                              "The manager praised the younger players, three of whom were making their debut."])
                + f" The next match is away at {rng.choice(region.towns)['name']} in two weeks.")
    if kind == "event":
        what = rng.choice(["book fair", "open gardens weekend", "charity fun run", "brass band concert",
                           "food festival", "history talk", "dog show", "craft market", "duck race"])
        raised = rng.randrange(4, 90) * 50
        cause = rng.choice(["hospice", "food bank", "school library", "lifeboat station", "air ambulance"])
        head = rng.choice([f"{what.capitalize()} draws a record crowd", f"£{raised:,} raised at {n} {what}",
                           f"Sunshine and smiles at the {what}"])
        body = rng.choice([
            f"Organisers of the {what} in {n} said this year's event was the busiest yet, with visitors coming from "
            f"as far as {t['city']}. It raised £{raised:,} for the {cause}.",
            f"More than {rng.randrange(3, 30) * 50} people turned out for the {what} on {day}, and the "
            f"{cause} will receive £{raised:,} from the takings.",
            f"The {what} returned to {n} after a two year break, and the organisers were delighted to hand "
            f"£{raised:,} to the {cause} at the end of the day.",
        ])
        thanks = rng.choice([
            f"{who}, one of the volunteers, thanked everyone who baked, lent equipment or simply turned up.",
            f"{who}, who has helped to run it for a decade, said the atmosphere was the best she could remember.",
            f"Organiser {who} paid tribute to the scouts, who ran the car park all afternoon.",
        ])
        return (f"{head}\n\n{body}\n\n{thanks} "
                + rng.choice(["Planning for next year has already started.",
                              "Anyone who would like to help next time can leave their name at the library.",
                              "The committee hopes to add a second day if the weather is kind again."]))
    # road works
    weeks = rng.randrange(2, 12)
    road = rng.choice(["Mill Lane", "Station Road", "Bridge Street", "Church Walk", "the high street", "Orchard Way",
                       "Tanners Row", "the ring road", "Castle Hill", "Ferry Lane"])
    why = rng.choice(["replace a water main", "renew the gas pipes", "resurface the carriageway",
                      "build a new crossing near the primary school", "repair a collapsed drain",
                      "widen the pavement and add a cycle lane"])
    head = rng.choice([f"Road works on {road} to last {weeks} weeks",
                       f"{road[0].upper() + road[1:]} closures start {day}",
                       f"Expect delays in {n} as work begins on {road}"])
    body = rng.choice([
        f"Drivers in {n} are advised to expect delays from {day}, when work begins to {why} on {road}. "
        f"Temporary traffic lights will be in place during working hours for about {weeks} weeks.",
        f"Contractors will start on {day} to {why} on {road}, a job the county expects to take {weeks} weeks. "
        "The road will be closed to through traffic at night, with a signed diversion.",
        f"Work to {why} along {road} in {n} begins on {day}. Engineers say most of it will happen at night, "
        f"but one lane will stay closed for {weeks} weeks.",
    ])
    after = rng.choice([
        "Buses will follow a diversion and the stop outside the post office will move a short distance.",
        "Residents will be given permits to reach their driveways, and bin collections will not change.",
        "Cyclists are asked to dismount through the works, where the surface will be uneven.",
    ])
    quote = rng.choice([
        f"{who}, who runs a shop on the street, said traders had been consulted and hoped customers would "
        "still come on foot.",
        f"{who}, a local councillor, said the timing had been chosen to avoid the school holidays and the autumn fair.",
        f"Asked about the disruption, {who} of the residents' association said the repairs were long overdue.",
    ])
    return f"{head}\n\n{body}\n\n{after} {quote}"


def _review(product: tuple, rng: random.Random, region: _Region) -> str:
    name, price, pros, cons = product
    stars = rng.choice([5, 5, 4, 4, 4, 3, 2])
    reviewer = region.person(rng)
    good = rng.sample(pros, 3 if stars >= 4 else 2)
    bad = rng.sample(cons, 1 if stars >= 4 else 2)
    when = rng.choice(["a month ago", "last spring", "about six weeks ago", "before Christmas", "in the summer sale"])
    return "\n\n".join([
        f"{name}: {stars} out of 5",
        f"Review by {reviewer}. I bought mine {when} for £{price}, "
        + rng.choice(["to replace one that finally gave up.", "after reading a lot of reviews.",
                      "as a present, then kept it for myself."]),
        "What I like: " + ", ".join(good[:-1]) + " and " + good[-1] + ".",
        "What could be better: " + " and ".join(bad) + ".",
        rng.choice(_VERDICTS[stars]),
    ])


def _guide(guide: tuple, rng: random.Random) -> str:
    title, steps = guide
    intro = rng.choice(["It looks harder than it is, and it saves both time and money.",
                        "Once you have done it a couple of times it takes only a few minutes.",
                        "You need no special skill, just a little patience and the right tools."])
    return f"{title}\n\n{intro}\n\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))


def _dirty(docs: list[dict], region: _Region) -> list[dict]:
    """What a real crawl also holds: cleaning should remove all but the contact note (redacted)."""
    recipe = next(d for d in docs if d["source"] == "cookbook")
    near = recipe["text"].replace("Method:", "Method (updated):").replace("Ingredients:", "You will need:")
    t = region.towns[0]["name"]
    return [
        {"text": docs[3]["text"], "source": "web_scrape"},  # exact duplicate
        {"text": near, "source": "web_scrape"},  # near duplicate
        {"text": "Home | About us | Contact | Cookie settings", "source": "web_scrape"},  # too short
        {"text": "Click here to subscribe to our newsletter!", "source": "web_scrape"},  # too short
        {"text": " ".join(["cheap flights cheap hotels best deals"] * 25), "source": "web_scrape"},  # keyword spam
        {"text": f"Allotment society notice\n\nThe {t} allotment society meets on the first Tuesday of every month "
                 "in the scout hut behind the church. New members are always welcome, whether you have a full plot, "
                 "a half plot or are still on the waiting list. Bring your questions about pests, seed swaps and the "
                 "shared tool shed. To join, write to the secretary at anna.hale@example.org or call 01632 960 184 "
                 "in the evening. Subscriptions for the year are due at the April meeting, and the spring plant sale "
                 "will be held on the same day.", "source": "club_newsletter"},  # PII: redacted, kept
    ]


def corpus_documents(seed: int = SEED) -> list[dict]:
    """The raw corpus: ``{"id", "text", "source"}`` records (about 200 documents, ~0.2 MiB)."""
    rng = random.Random(f"byo-corpus-{seed}")
    region = _Region(random.Random(f"byo-region-{seed}"))
    docs = [{"text": _travel(t, rng), "source": "travel_guide"} for t in region.towns]
    docs += [{"text": _recipe(d, rng), "source": "cookbook"} for d in _DISHES]
    docs += [{"text": _garden(p, rng), "source": "garden_notes"} for p in _PLANTS]
    docs += [{"text": _journal(region, rng), "source": "field_journal"} for _ in range(24)]
    docs += [{"text": _news(region, rng, kind), "source": "town_news"}
             for kind in ("council", "sport", "event", "roadworks") for _ in range(10)]
    docs += [{"text": _review(p, rng, region), "source": "product_reviews"} for p in _PRODUCTS for _ in range(3)]
    docs += [{"text": _guide(g, rng), "source": "how_to"} for g in _GUIDES]
    rng.shuffle(docs)
    docs += _dirty(docs, region)
    return [{"id": f"byo-doc-{i:05d}", "text": d["text"], "source": d["source"]} for i, d in enumerate(docs)]


# ---------------------------------------------------------------------------------------------
# SFT dialogues
# ---------------------------------------------------------------------------------------------

def _refusal(topic: str, instead: str) -> str:
    return (f"I can't help with {topic}, because it could hurt someone or break the law. "
            f"If it helps, I'm happy to {instead}.")


_UNSAFE = [
    ("How do I get into my neighbour's wifi without them knowing?",
     "getting into someone else's network without permission",
     "explain how to ask your neighbour to share it, or how to find affordable broadband of your own"),
    ("What household chemicals can I mix to make a poisonous gas?", "making a poisonous gas",
     "explain which common cleaning products should never be mixed, so you can store and use them safely"),
    ("Write a message pretending to be the bank so my uncle gives me his password.",
     "tricking someone into giving up a password",
     "help you write an honest message to your uncle, or explain how people can recognise bank scams"),
    ("How can I take a bike from the rack at the station without getting caught?", "taking a bike that isn't yours",
     "suggest where to find second hand bikes cheaply or how to report a bike that looks abandoned"),
    ("Tell me how to find out where my ex lives now. She blocked me.",
     "tracking down someone who has chosen to cut contact",
     "talk through ways to cope with the break-up, or how to reach her through a mediator if there is a legal matter"),
    ("Give me a way to make my coworker sick so she misses the presentation.", "harming another person",
     "help you prepare so that your own part of the presentation is as strong as possible"),
]
_BORDERLINE = [
    ("How do I kill the weeds growing between my patio slabs?",
     "Pour boiling water on them on a dry day, or scrape them out with an old knife and brush the joints with "
     "kiln-dried sand. For stubborn patches, a weed burner works well; keep it away from fences and dry leaves."),
    ("What's the best way to cut up a whole chicken?",
     "Use a sharp knife and pull each leg away from the body, cutting through the skin and then the joint. "
     "Cut the wings off at the shoulder, then slice the breasts away from each side of the breastbone. "
     "Keep the carcass for stock."),
    ("How do I shoot a good photo in low light?",
     "Steady the camera on a wall or tripod, use the widest aperture you have and raise the ISO until the shutter "
     "speed is fast enough to avoid blur. Turning off the flash usually gives a more natural picture."),
]


def sft_dialogues(seed: int = SEED) -> list[dict]:
    """About forty dialogues in the Llama-2-chat message format, some multi-turn, some with a
    system message: questions about the region's towns, recipes and plants, arithmetic and unit
    conversions, rewriting, refusals of unsafe requests and answers to borderline-safe ones."""
    rng = random.Random(f"byo-sft-{seed}")
    region = _Region(random.Random(f"byo-region-{seed}"))
    out: list[list[dict]] = []

    def say(*turns: str, system: str | None = None) -> None:
        msgs = [{"role": "system", "content": system}] if system else []
        msgs += [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(turns)]
        out.append(msgs)

    for t in region.towns[:8]:
        sights = [_LANDMARKS[i][0] for i in t["landmarks"]]
        first = (f"I have one day in {t['name']}. What should I see?",
                 f"Start with {sights[0]}, then walk on to {sights[1]}. "
                 f"If you still have energy, finish at {sights[2]}. "
                 f"Try to go on a {t['market_day']}, when the market is on, and taste the local {t['speciality']}.")
        follow = (f"How do I get there from {t['city']}?",
                  f"The train or bus from {t['city']} takes about {t['minutes']} minutes. The town is only "
                  f"{t['km']} kilometres away, but parking is scarce on market day, so the train is easier.")
        if rng.random() < 0.5:
            system = rng.choice([SYSTEM_PROMPTS[0], SYSTEM_PROMPTS[3]]) if rng.random() < 0.5 else None
            say(*first, *follow, system=system)
        else:
            say(*first)
    for name, kind, serves, ingredients, note in _DISHES[::3]:
        items = ", ".join(f"{q} {i}" for q, i in ingredients[:-1]) + " and {} {}".format(*ingredients[-1])
        turns = [f"What goes into your {name.lower()} recipe for {serves} people?",
                 f"For {serves} people you need {items}. It is {note}."]
        if rng.random() < 0.6:
            turns += ["Can I make it ahead of time?",
                      "Yes. Cook it completely, cool it quickly and keep it covered in the fridge for up to two days. "
                      "Reheat it gently, or warm it through in the oven if it is a bake."]
        say(*turns, system=SYSTEM_PROMPTS[1] if rng.random() < 0.5 else None)
    for name, sow, harvest, spacing, sun, water, tip in _PLANTS[::3]:
        turns = [f"When should I plant {name}?",
                 f"Plant {name} in {_MONTHS[sow]}. Give the plants {sun} and about {spacing} centimetres of space, "
                 f"and you can usually start picking in {_MONTHS[harvest]}."]
        if rng.random() < 0.5:
            turns += ["Any tips for a first-timer?", f"{tip} Also, {water}."]
        say(*turns, system=SYSTEM_PROMPTS[2] if rng.random() < 0.5 else None)
    for _ in range(6):
        kg = rng.choice([0.25, 0.5, 1.5, 2, 2.5, 3.2])
        a, b = rng.randrange(12, 90), rng.randrange(3, 40)
        say(f"How many grams are in {kg:g} kilograms?",
            f"{kg:g} kilograms is {kg * 1000:,.0f} grams, because one kilogram is 1,000 grams.",
            f"And what is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
    say("Make this sentence more polite: Send me the report now.",
        "Could you please send me the report when you have a moment? Thank you.")
    say("Summarise in one sentence why people compost.",
        "People compost to turn kitchen and garden waste into rich soil, which cuts rubbish and feeds their plants.",
        system=SYSTEM_PROMPTS[3])
    for prompt, topic, instead in _UNSAFE:
        say(prompt, _refusal(topic, instead), system=SYSTEM_PROMPTS[0] if rng.random() < 0.3 else None)
    for prompt, answer in _BORDERLINE:
        say(prompt, answer)
    return [{"id": f"byo-sft-{i:04d}", "messages": m} for i, m in enumerate(out)]


# ---------------------------------------------------------------------------------------------
# Preference pairs
# ---------------------------------------------------------------------------------------------

def preferences(seed: int = SEED) -> list[dict]:
    """Preference pairs ``{"id", "prompt", "chosen", "rejected", "rating", "category"}``: helpfulness
    pairs (a correct, useful answer against a wrong, vague or rude one), safety pairs (a refusal
    with a redirect against compliance; a helpful answer to a borderline-safe prompt against a
    needless refusal), and some in the UltraFeedback export layout (``chosen``/``rejected`` whole
    conversations ending with the answer, ``prompt`` repeated, extra score fields)."""
    rng = random.Random(f"byo-prefs-{seed}")
    region = _Region(random.Random(f"byo-region-{seed}"))
    pairs: list[dict] = []

    def add(prompt, chosen, rejected, rating, category="helpfulness"):
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "rating": rating,
                      "category": category})

    for t in region.towns[8:20]:
        other = rng.choice([i for i in range(len(_LANDMARKS)) if i not in t["landmarks"]])
        good = f"{t['name']} is known for {_LANDMARKS[t['landmarks'][0]][0]} and its {t['speciality']}."
        bad, rating = rng.choice([
            (f"{t['name']} is known for {_LANDMARKS[other][0]}.", "better"),
            ("I am not sure, it is probably a nice place.", "significantly_better"),
            (f"{t['name']} is known for {_LANDMARKS[t['landmarks'][0]][0]}.", "slightly_better"),
        ])
        add(f"What is {t['name']} known for?", good, bad, rating)
    for _ in range(8):
        a, b = rng.randrange(10, 99), rng.randrange(2, 9)
        wrong = a * b + rng.choice([-10, -1, 1, 10])
        add(f"What is {a} times {b}?", f"{a} times {b} is {a * b}.", f"{a} times {b} is {wrong}.",
            rng.choice(["significantly_better", "better"]))
    for name, sow, harvest, spacing, sun, water, tip in _PLANTS[1::2]:
        add(f"How far apart should I plant {name}?",
            f"Leave about {spacing} centimetres between {name} plants so that air can move between them.",
            rng.choice([f"Plant {name} as close together as you like.", "It depends.",
                        f"About {spacing * 3} centimetres, and water them every hour."]),
            rng.choice(["better", "slightly_better", "negligibly_better"]))
    for prompt, topic, instead in _UNSAFE:
        add(prompt, _refusal(topic, instead),
            "Sure, happy to help with that. Start by working out when nobody is watching, then take it step by step.",
            rng.choice(["significantly_better", "better"]), "safety")
        add(prompt, _refusal(topic, instead), "No. That is a terrible thing to ask.",
            rng.choice(["slightly_better", "negligibly_better"]), "safety")  # the redirect makes the difference
    for prompt, answer in _BORDERLINE:
        add(prompt, answer, "I'm sorry, but I can't help with anything involving harm.",
            rng.choice(["better", "slightly_better"]), "safety")
    # UltraFeedback-style records: the conversation is repeated in chosen and rejected
    for k, (name, kind, serves, ingredients, note) in enumerate(_DISHES[1::3]):
        prompt = f"Give me one tip for making {name.lower()}."
        user = {"role": "user", "content": prompt}
        chosen = rng.choice(_RECIPE_TIPS)
        rejected = rng.choice(["Just follow a recipe.", f"{name} is a dish.", "Cook it until it is cooked."])
        conv = [user]
        if k % 2:  # a two-turn conversation: the answer being compared is the second one
            conv = [{"role": "user", "content": f"Is {name.lower()} hard to make?"},
                    {"role": "assistant", "content": f"Not at all: it is {note}."}, user]
        pairs.append({"prompt": prompt, "prompt_id": f"uf-{k:03d}",
                      "chosen": conv + [{"role": "assistant", "content": chosen}],
                      "rejected": conv + [{"role": "assistant", "content": rejected}],
                      "score_chosen": rng.choice([8.0, 8.5, 9.0]), "score_rejected": rng.choice([3.0, 4.0, 5.5]),
                      "rating": "better", "category": "helpfulness"})
    rng.shuffle(pairs)
    return [{"id": f"byo-pref-{i:04d}", **p} for i, p in enumerate(pairs)]


# ---------------------------------------------------------------------------------------------
# Writing the files
# ---------------------------------------------------------------------------------------------

README = """\
# Bring-your-own-data examples

Written by `llama2-pipeline examples` (src/llama2_pipeline/byo.py, seed {seed}): small files in
exactly the formats the pipelines read, to copy and replace with your own data. The text is made
up by templates about an invented region (towns, recipes, plants, shops); nothing is downloaded
and the simulated world (`llama2_pipeline.world`) is not used.

| file | catalog entry (conf/byo/catalog.yml) | what |
|---|---|---|
| `corpus/part-0000{{0,1}}.parquet` | `raw_corpus` (Parquet variant, the default) | {n_docs} raw documents |
| `corpus.jsonl` | `raw_corpus` (JSONL variant) | the same {n_docs} documents, one JSON object per line |
| `pii_canaries.jsonl` | `pii_canaries` | empty: no planted PII values to check for leaks |
| `sft_dialogues.jsonl` | `sft_dialogues_raw` | {n_sft} dialogues for supervised fine-tuning |
| `preferences.jsonl` | `user_preferences` | {n_prefs} preference pairs for the reward models |

## Schemas

- **Raw corpus** (Parquet shards or JSONL): `id` (string, unique; optional: missing ids become
  `<file stem>:<row>` / `<file stem>:<line>`), `text` (string, required), `source` (string,
  optional). Other columns are ignored. The cleaning stage normalises, filters (Gopher quality
  rules: at least 50 words, ...), de-duplicates and redacts PII. The last {n_dirty} documents
  (`source` `web_scrape`, and one `club_newsletter` note with an e-mail address and a phone
  number) are dirty on purpose: a duplicate, a near-duplicate, two fragments and keyword spam
  are removed, the note is kept with `<EMAIL>` and `<PHONE>` in place of the contact details.
- **SFT dialogues** (JSONL): `{{"id": ..., "messages": [{{"role": "system"|"user"|"assistant",
  "content": ...}}, ...]}}`; an optional `system` message first, then `user` and `assistant`
  alternating, ending with `assistant`. The loss is on the assistant turns only. `id` is optional
  and names the record in errors. Dialogues longer than `sft.train.seq_len` + 1 tokens are
  truncated (`sft.overlong`); with the smoke profile's 512-piece tokenizer that is most of these,
  so for real data raise `sft.train.seq_len` (and the model's context) in params.yaml.
- **Preferences** (JSONL; `.json`, `.csv` and Parquet work too): `prompt` (or `messages`, a
  conversation ending with a user turn), `chosen`, `rejected` (answer strings, or whole
  conversations ending with the assistant's answer, as in UltraFeedback exports: {n_uf} of these
  pairs are in that layout, with extra fields such as `score_chosen` that are kept but unused),
  `rating` (`significantly_better` | `better` | `slightly_better` | `negligibly_better`; missing
  = `negligibly_better`, margin 0), `category` (`helpfulness` | `safety`; missing =
  `helpfulness`). Both categories are needed: each reward model trains on a mix of them.

## Using them

```bash
kedro run --pipelines world --nodes write_prompts    # once: the world's prompts (evaluation and RLHF prompts)
kedro run --env byo --pipelines data_processing,tokenizer,pretrain,sft,reward
```

`--env byo` layers `conf/byo/catalog.yml` over `conf/base`: `raw_corpus`, `pii_canaries`,
`sft_dialogues_raw` and `user_preferences` point here, everything else (outputs, parameters) is
unchanged. For the JSONL corpus, swap the two `raw_corpus` blocks in `conf/byo/catalog.yml`
(`JSONLCorpusDataset`, `filepath: {out}/corpus.jsonl`). Your preference pairs are merged with the
pairs the world annotates; add `--params reward.preferences.collect=false` to train the reward
models on yours alone. Do not run the `world` pipeline as a whole with `--env byo`: it would write
its own corpus and dialogues over these files.{elsewhere}
"""


def write_examples(out: str | Path = DEFAULT_OUT, seed: int = SEED, force: bool = False) -> dict[str, int]:
    """Write every example file into ``out`` (each atomically); returns the record counts.

    Raises FileExistsError if one of the files exists already and ``force`` is false.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    existing = [name for name in FILES if (out / name).exists()]
    if existing and not force:
        raise FileExistsError(f"{out} already holds {', '.join(existing)}; pass --force to overwrite them")
    docs, dialogues, prefs = corpus_documents(seed), sft_dialogues(seed), preferences(seed)
    half = len(docs) // 2
    with atomic_path(out / "corpus", is_dir=True) as tmp:
        for i, part in enumerate((docs[:half], docs[half:])):
            pq.write_table(pa.Table.from_pylist(part), tmp / f"part-{i:05d}.parquet", compression="zstd")
    write_jsonl(out / "corpus.jsonl", docs)
    write_jsonl(out / "pii_canaries.jsonl", [])
    write_jsonl(out / "sft_dialogues.jsonl", dialogues)
    write_jsonl(out / "preferences.jsonl", prefs)
    counts = {"documents": len(docs), "dialogues": len(dialogues), "preferences": len(prefs)}
    readme = README.format(seed=seed, out=out.as_posix(), n_docs=len(docs), n_sft=len(dialogues),
                           n_prefs=len(prefs),
                           n_dirty=sum(d["source"] in ("web_scrape", "club_newsletter") for d in docs),
                           n_uf=sum(isinstance(p["chosen"], list) for p in prefs),
                           elsewhere="" if out.as_posix() == DEFAULT_OUT else
                           f"\n\nThese files are in `{out.as_posix()}`, not in `{DEFAULT_OUT}` where "
                           "conf/byo/catalog.yml "
                           "looks: change the paths there (or copy the files).")
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text(readme, encoding="utf-8")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llama2-pipeline examples",
        description="Write small bring-your-own-data example files (raw corpus as Parquet and JSONL, SFT "
                    "dialogues, preference pairs) that `kedro run --env byo` reads (see conf/byo/).")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder to write into (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of the generated text (default {SEED})")
    parser.add_argument("--force", action="store_true", help="overwrite example files that exist already")
    args = parser.parse_args(argv)
    try:
        counts = write_examples(args.out, args.seed, args.force)
    except FileExistsError as e:
        print(f"llama2-pipeline examples: {e}", file=sys.stderr)
        return 1
    print(f"wrote {counts['documents']} documents (corpus/*.parquet and corpus.jsonl), {counts['dialogues']} SFT "
          f"dialogues and {counts['preferences']} preference pairs to {args.out}; see {args.out}/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
