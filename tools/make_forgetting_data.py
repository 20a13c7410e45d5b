"""Write the data that measures forgetting (chapter 14): a general-knowledge quiz and neutral prompts.

    .venv/bin/python -m tools.make_forgetting_data        # about 1 minute (the continuations are generated)

* ``data/forgetting/general_quiz.jsonl``: multiple-choice questions of general knowledge that a small chat model knows
  (capitals, opposites, plurals, colours, units, everyday facts), written for the course from the fact tables
  below (CC0). Each row: ``question``, four ``choices``, ``answer`` (the index of the right one), ``family``.
  The wrong choices are other answers of the same family, drawn with a fixed seed, and the order of the four
  is shuffled with it.
* ``data/forgetting/neutral_prompts.jsonl``: neutral openings of sentences (``prompt``) and the base model's own greedy
  continuation of each (``continuation``, 40 tokens of SmolLM2-135M-Instruct, fp32). How much less likely a
  fine-tuned model finds these continuations than the base model did measures its drift from the base
  model's behaviour (chapter 14).
"""
from __future__ import annotations

import json
import pathlib
import random

import torch

from minilora.course.models import load_chat_model
from minilora.files import write_atomic

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUIZ = ROOT / "data" / "forgetting" / "general_quiz.jsonl"
NEUTRAL = ROOT / "data" / "forgetting" / "neutral_prompts.jsonl"
SEED, NEW_TOKENS = 14, 40

CAPITALS = {"France": "Paris", "Italy": "Rome", "Germany": "Berlin", "Spain": "Madrid", "Japan": "Tokyo",
            "Egypt": "Cairo", "Russia": "Moscow", "England": "London", "Greece": "Athens", "China": "Beijing",
            "Portugal": "Lisbon", "Ireland": "Dublin", "Austria": "Vienna", "Norway": "Oslo", "Sweden": "Stockholm",
            "Poland": "Warsaw", "Canada": "Ottawa", "Kenya": "Nairobi", "Thailand": "Bangkok", "Peru": "Lima",
            "Argentina": "Buenos Aires", "Mexico": "Mexico City", "Denmark": "Copenhagen", "Finland": "Helsinki",
            "Hungary": "Budapest", "Belgium": "Brussels", "Cuba": "Havana", "India": "New Delhi",
            "South Korea": "Seoul", "Turkey": "Ankara"}
OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "open": "closed",
             "light": "dark", "early": "late", "full": "empty", "old": "young", "high": "low", "wet": "dry",
             "hard": "soft", "strong": "weak", "rich": "poor", "loud": "quiet", "long": "short", "thick": "thin",
             "heavy": "light", "win": "lose"}
PLURALS = {"child": "children", "mouse": "mice", "foot": "feet", "tooth": "teeth", "man": "men", "woman": "women",
           "goose": "geese", "person": "people", "leaf": "leaves", "knife": "knives", "wolf": "wolves",
           "box": "boxes", "city": "cities", "baby": "babies", "bus": "buses"}
COLOURS = {"the sky on a clear day": "blue", "grass": "green", "snow": "white", "coal": "black",
           "a ripe banana": "yellow", "a ripe tomato": "red", "an orange": "orange", "chocolate": "brown",
           "a lemon": "yellow", "blood": "red", "milk": "white", "a frog": "green"}
FACTS = [  # (question, answer, family of its wrong answers)
    ("How many days are in a week?", "seven", "number"), ("How many legs does a spider have?", "eight", "number"),
    ("How many months are in a year?", "twelve", "number"), ("How many legs does a dog have?", "four", "number"),
    ("How many sides does a triangle have?", "three", "number"), ("How many hours are in a day?", "24", "count"),
    ("How many minutes are in an hour?", "60", "count"), ("How many seconds are in a minute?", "60", "count"),
    ("How many centimetres are in a metre?", "100", "count"), ("How many grams are in a kilogram?", "1000", "count"),
    ("How many days are in a leap year?", "366", "count"), ("How many continents are there?", "seven", "number"),
    ("Which planet do we live on?", "Earth", "planet"),
    ("Which planet is known as the red planet?", "Mars", "planet"),
    ("Which is the largest planet in the solar system?", "Jupiter", "planet"),
    ("Which planet is closest to the Sun?", "Mercury", "planet"),
    ("What do bees make?", "honey", "food"), ("What do cows give us to drink?", "milk", "food"),
    ("What do hens lay?", "eggs", "food"), ("Which fruit keeps the doctor away, in the saying?", "an apple", "fruit"),
    ("What is frozen water called?", "ice", "matter"), ("What gas do humans need to breathe?", "oxygen", "gas"),
    ("What gas do plants take in from the air?", "carbon dioxide", "gas"),
    ("Which animal is known as the king of the jungle?", "the lion", "animal"),
    ("Which animal has a long neck and eats leaves from tall trees?", "the giraffe", "animal"),
    ("Which animal is the largest mammal in the ocean?", "the blue whale", "animal"),
    ("Which bird cannot fly and lives in Antarctica?", "the penguin", "animal"),
    ("What is the first month of the year?", "January", "month"),
    ("What is the last month of the year?", "December", "month"),
    ("Which month comes after March?", "April", "month"), ("Which day comes after Monday?", "Tuesday", "day"),
    ("Which day comes before Sunday?", "Saturday", "day"),
    ("At what temperature in Celsius does water freeze?", "0", "temperature"),
    ("At what temperature in Celsius does water boil at sea level?", "100", "temperature"),
    ("Which organ pumps blood through the body?", "the heart", "organ"),
    ("Which organ do we use to think?", "the brain", "organ"),
    ("Which organ do we breathe with?", "the lungs", "organ"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare", "writer"),
    ("What is the largest ocean on Earth?", "the Pacific Ocean", "ocean"),
    ("What is the longest river in Africa?", "the Nile", "river"),
]
WRONG = {"number": ["two", "five", "six", "nine", "ten", "three", "eight", "four", "twelve", "seven"],
         "count": ["10", "12", "30", "50", "365", "500", "24", "60", "100", "1000", "366"],
         "planet": ["Venus", "Saturn", "Neptune", "Earth", "Mars", "Jupiter", "Mercury"],
         "food": ["bread", "wool", "silk", "honey", "milk", "eggs", "butter"],
         "fruit": ["a banana", "a pear", "a grape", "an apple"], "matter": ["steam", "sand", "glass", "ice"],
         "gas": ["helium", "nitrogen", "hydrogen", "oxygen", "carbon dioxide"],
         "animal": ["the elephant", "the tiger", "the zebra", "the lion", "the giraffe", "the shark", "the penguin",
                    "the eagle", "the blue whale"],
         "month": ["February", "June", "October", "January", "December", "April", "May"],
         "day": ["Wednesday", "Friday", "Thursday", "Monday", "Tuesday", "Saturday"],
         "temperature": ["50", "10", "0", "100", "37", "200"],
         "organ": ["the liver", "the stomach", "the skin", "the heart", "the brain", "the lungs"],
         "writer": ["Charles Dickens", "Jane Austen", "Mark Twain", "William Shakespeare"],
         "ocean": ["the Atlantic Ocean", "the Indian Ocean", "the Arctic Ocean", "the Pacific Ocean"],
         "river": ["the Amazon", "the Thames", "the Danube", "the Nile"]}
NEUTRAL_PROMPTS = [
    "The history of the bicycle begins", "Every morning, the baker", "A good way to learn a new language is",
    "The old lighthouse stood", "Rain forests are important because", "When you plant a tree,",
    "The library was quiet except for", "Scientists study the ocean floor to", "My favourite season is autumn because",
    "The train left the station and", "To make a cup of tea, you", "Mountains are formed when",
    "The museum's newest exhibit shows", "Children enjoy playing in the park because", "The recipe calls for",
    "In the small village, people", "The first computers were", "A healthy breakfast can include",
    "The river flows from the hills", "During the winter, many birds", "The town market opens early, and",
    "Music has been part of human life", "The moon affects the tides by", "Good sleep helps the body",
    "The artist mixed blue and yellow", "Bridges are designed to", "On a sunny afternoon, the beach",
    "The postman walked along the street", "Reading books every day", "The desert at night is",
    "Farmers grow wheat in", "The city's oldest building", "Volcanoes erupt when", "A friendly dog waited",
    "The word 'photograph' comes from", "Honeybees communicate by", "The school play was about",
    "Electric cars are becoming", "The clock in the hall", "Walking in the forest, you can hear",
]


def quiz_items(rng: random.Random) -> list[dict]:
    items = []

    def add(question: str, answer: str, pool: list[str], family: str) -> None:
        wrong = rng.sample(sorted({p for p in pool if p != answer}), 3)
        choices = wrong + [answer]
        rng.shuffle(choices)
        items.append({"question": question, "choices": choices, "answer": choices.index(answer), "family": family})

    for country, city in CAPITALS.items():
        add(f"What is the capital of {country}?", city, list(CAPITALS.values()), "capital")
    for word, opposite in OPPOSITES.items():
        add(f"What is the opposite of '{word}'?", opposite, list(OPPOSITES.values()), "opposite")
    for word, plural in PLURALS.items():
        add(f"What is the plural of '{word}'?", plural, list(PLURALS.values()) + [word + "s" for word in PLURALS],
            "plural")
    for thing, colour in COLOURS.items():
        add(f"What colour is {thing}?", colour, ["blue", "green", "white", "black", "yellow", "red", "orange",
                                                 "brown", "purple", "pink"], "colour")
    for question, answer, family in FACTS:
        add(question, answer, WRONG[family], "fact")
    return items


def continuations(prompts: list[str]) -> list[dict]:
    model, tok = load_chat_model()
    rows = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                                 pad_token_id=tok.eos_token_id)
            text = tok.decode(out[0, ids.shape[1]:], clean_up_tokenization_spaces=False)
            rows.append({"prompt": prompt, "continuation": text})
    return rows


def main() -> None:
    items = quiz_items(random.Random(SEED))
    write_atomic(QUIZ, "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))
    print(f"wrote {QUIZ.relative_to(ROOT)}: {len(items)} questions")
    rows = continuations(NEUTRAL_PROMPTS)
    write_atomic(NEUTRAL, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {NEUTRAL.relative_to(ROOT)}: {len(rows)} prompts with the base model's continuations")


if __name__ == "__main__":
    main()
